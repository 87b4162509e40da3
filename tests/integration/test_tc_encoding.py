"""The one htb encoding (emulator.shaping.base) read back by iproute2's ``tc`` from a real veth.

tc decodes the kernel's dump with its own code, so it is an implementation independent of ours: the rate
it reports (64-bit rates included, above 34.36 Gbit/s) must be the one we asked for. sch_netem is not in
this kernel: the netem half runs in the qemu VM (test_netem_vm.py); here the netem backend's failure must
name the node, the interface and the operation.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess

import pytest

from emulator import rtnl
from emulator.shaping import probe_netem
from emulator.shaping.base import LinkShape, Port, htb_class_body, htb_root_body
from emulator.shaping.netem import NetemShaper
from topologies.errors import ApplyError

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


def test_netem_backend_failure_names_node_link_and_operation(veth):
    ok, detail = probe_netem()
    if ok:
        pytest.skip("this kernel has sch_netem: the failure path cannot be provoked this way")
    path, ifindex = veth
    sh = NetemShaper()
    try:
        with pytest.raises(ApplyError) as e:
            sh.set([(Port("n1", path, "tca", ifindex), LinkShape(5.0, 100.0))], lambda node: None)
        assert (e.value.node, e.value.link, e.value.operation) == ("n1", "tca", "tc replace netem")
        assert "No such file or directory" in str(e.value)
    finally:
        sh.close()


_TIME_UNITS = {"s": 1e3, "ms": 1.0, "us": 1e-3, "ns": 1e-6}


def _tc_netem(dev: str) -> dict[str, float]:
    """Delay (ms), limit (packets) and loss (%) of the netem qdisc 10: as ``tc qdisc show`` prints them."""
    out = subprocess.run(["tc", "-n", _NS, "qdisc", "show", "dev", dev], capture_output=True, text=True,
                         check=True).stdout
    lines = [line for line in out.splitlines() if line.startswith("qdisc netem 10: parent 1:1 ")]
    assert len(lines) == 1, out
    line = lines[0]
    limit = re.search(r" limit (\d+)", line)
    delay = re.search(r" delay ([0-9.]+)(s|ms|us|ns)\b", line)
    loss = re.search(r" loss ([0-9.]+)%", line)
    assert limit and delay, line
    return {"limit": int(limit.group(1)), "delay_ms": float(delay.group(1)) * _TIME_UNITS[delay.group(2)],
            "loss_pct": float(loss.group(1)) if loss else 0.0}


def test_netem_backend_sends_only_what_changed_and_tc_reads_it_back(veth):
    ok, detail = probe_netem()
    if not ok:
        pytest.skip(f"no sch_netem in this kernel ({detail}); runs in the qemu VM (test_netem_vm.py)")
    path, ifindex_a = veth
    out = subprocess.run(["ip", "-n", _NS, "-j", "link", "show", "tcb"], capture_output=True, text=True,
                         check=True).stdout
    ifindex_b = json.loads(out)[0]["ifindex"]
    a, b = Port("n1", path, "tca", ifindex_a), Port("n1", path, "tcb", ifindex_b)
    sh = NetemShaper()
    try:
        # tca may carry the htb root of the tests above (kept, its class replaced); tcb has none yet
        sh.set([(a, LinkShape(5.0, 100.0, 1.0)), (b, LinkShape(12.5, 1000.0))], lambda node: None)
        assert sh.stats()["requests"] == 6  # per port: root, class, netem
        assert _tc_netem("tca") == {"limit": 1000, "delay_ms": 5.0, "loss_pct": 1.0}
        # 1000 Mbit/s x 12.5 ms = 1,032 packets of 1514 B: twice that is above the floor of 1000
        assert _tc_netem("tcb") == {"limit": math.ceil(2 * 1000e6 / 8 * 12.5e-3 / 1514), "delay_ms": 12.5,
                                    "loss_pct": 0.0}
        assert _tc_class("tcb")["rate"] == 1000e6

        sh.set([(a, LinkShape(5.0, 100.0, 1.0)), (b, LinkShape(12.5, 1000.0))], lambda node: None)
        assert sh.stats()["requests"] == 6  # nothing changed: nothing sent

        sh.set([(b, LinkShape(20.0, 1000.0))], lambda node: None)  # delay only: the netem qdisc only
        assert sh.stats()["requests"] == 7
        assert _tc_netem("tcb") == {"limit": math.ceil(2 * 1000e6 / 8 * 20e-3 / 1514), "delay_ms": 20.0,
                                    "loss_pct": 0.0}
        assert _tc_class("tcb")["rate"] == 1000e6

        # 40 Gbit/s (a 64-bit rate) x 10 ms: the class and the netem limit (2 x BDP of 1514 B packets)
        sh.set([(a, LinkShape(10.0, 40_000.0))], lambda node: None)
        assert sh.stats()["requests"] == 9
        assert _tc_class("tca")["rate"] == 40e9
        bdp_packets = 40e9 / 8 * 10e-3 / 1514
        assert _tc_netem("tca") == {"limit": math.ceil(2 * bdp_packets), "delay_ms": 10.0, "loss_pct": 0.0}
    finally:
        sh.close()
