"""The one htb encoding (emulator.shaping.base) read back by iproute2's ``tc`` from a real veth.

tc decodes the kernel's dump with its own code, so it is an implementation independent of ours: the rate
it reports (64-bit rates included, above 34.36 Gbit/s) must be the one we asked for. sch_netem is not in
this kernel: the netem half runs in the qemu VM (test_netem_vm.py); here the netem backend's failure must
name the node, the interface and the operation.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from emulator import rtnl
from emulator.shaping.base import LinkShape, htb_class_body, htb_root_body

pytestmark = pytest.mark.root

_NS = f"h8tc{os.getpid() % 100000}"


@pytest.fixture(scope="module")
def veth():
    """A veth pair tca/tcb inside a fresh named namespace; yields (ns_path, ifindex of tca)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to build network namespaces")
    subprocess.run(["ip", "netns", "add", _NS], check=True)
    try:
        subprocess.run(["ip", "-n", _NS, "link", "add", "name", "tca", "type", "veth", "peer", "name", "tcb"], check=True)
        for dev in ("tca", "tcb"):
            subprocess.run(["ip", "-n", _NS, "link", "set", dev, "up"], check=True)
        out = subprocess.run(["ip", "-n", _NS, "-j", "link", "show", "tca"], capture_output=True, text=True,
                             check=True).stdout
        yield f"/run/netns/{_NS}", json.loads(out)[0]["ifindex"]
    finally:
        subprocess.run(["ip", "netns", "del", _NS], check=False)


_RATE_UNITS = {"bit": 1, "Kbit": 1e3, "Mbit": 1e6, "Gbit": 1e9, "Tbit": 1e12}
_SIZE_UNITS = {"b": 1, "Kb": 1024, "Mb": 1024**2, "Gb": 1024**3}


def _number(text: str, units: dict[str, float]) -> float:
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]+)", text)
    assert m and m.group(2) in units, text
    return float(m.group(1)) * units[m.group(2)]


def _tc_class(dev: str) -> dict[str, float]:
    """Rate and ceil (bit/s), burst and cburst (bytes) of class 1:1 as ``tc -d class show`` prints them
    (this iproute2 has no JSON output for classes)."""
    out = subprocess.run(["tc", "-n", _NS, "-d", "class", "show", "dev", dev], capture_output=True,
                         text=True, check=True).stdout
    lines = [line for line in out.splitlines() if line.startswith("class htb 1:1 ")]
    assert len(lines) == 1, out
    m = re.search(r" rate (\S+) ceil (\S+) .* burst (\S+)/\d+ .* cburst (\S+)/\d+", lines[0])
    assert m, lines[0]
    return {"rate": _number(m.group(1), _RATE_UNITS), "ceil": _number(m.group(2), _RATE_UNITS),
            "burst": _number(m.group(3), _SIZE_UNITS), "cburst": _number(m.group(4), _SIZE_UNITS)}


@pytest.mark.parametrize("rate_mbps", [10.0, 10_000.0, 40_000.0, 100_000.0])
def test_tc_reads_back_the_rate_we_encoded(veth, rate_mbps):
    path, ifindex = veth
    rt = rtnl.Rtnl(path, "h8tc")
    try:
        b = rtnl.Batch()
        b.add(rtnl.RTM_NEWQDISC, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL, htb_root_body(ifindex), "root",
              ignore=(17,))  # EEXIST: the earlier parameter's root, kept
        b.add(rtnl.RTM_NEWTCLASS, rtnl.NLM_F_CREATE, htb_class_body(ifindex, LinkShape(1.0, rate_mbps)),
              "class")
        assert rt.run(b) == []
    finally:
        rt.close()
    c = _tc_class("tca")
    # tc prints a rate exactly when it is a whole number of its unit (all of these are)
    assert c["rate"] == c["ceil"] == rate_mbps * 1e6
    # tc turns the buffer (ticks) back into bytes at the rate and prints it to 3 significant digits
    burst_want = max(rate_mbps * 1e6 / 8 * 1e-3, 10 * 1514)
    assert c["burst"] == c["cburst"] == pytest.approx(burst_want, rel=0.01)
