"""The userspace backend's rate encoding (tbf, emulator.shaping.base) read back by iproute2's ``tc`` from a
real veth. tc decodes the kernel's dump with its own code, so it is an implementation independent of ours.

The rate it reports (64-bit rates included, above 34.36 Gbit/s) must be the one we asked for.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from emulator import rtnl
from emulator.shaping.base import LinkShape, tbf_qdisc_body

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


def _tc_qdiscs(dev: str) -> list[dict]:
    out = subprocess.run(["tc", "-n", _NS, "-j", "-d", "qdisc", "show", "dev", dev], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


def _send(path: str, body: bytes, flags: int) -> None:
    rt = rtnl.Rtnl(path, "h8tc")
    try:
        b = rtnl.Batch()
        b.add(rtnl.RTM_NEWQDISC, flags, body, "tbf")
        assert rt.run(b) == []
    finally:
        rt.close()


@pytest.mark.parametrize("rate_mbps", [10.0, 10_000.0, 40_000.0, 100_000.0])
def test_tc_reads_back_the_rate_we_encoded(veth, rate_mbps):
    path, ifindex = veth
    # created the first time, changed in place by the same message afterwards (one root, never two)
    _send(path, tbf_qdisc_body(ifindex, LinkShape(1.0, rate_mbps)), rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE)
    roots = [q for q in _tc_qdiscs("tca") if q.get("root")]
    assert len(roots) == 1 and roots[0]["kind"] == "tbf" and roots[0]["handle"] == "1:", roots
    opts = roots[0]["options"]
    # tc's JSON gives the rate in bytes per second, 64-bit rates included
    assert opts["rate"] == rate_mbps * 1e6 / 8
    assert opts["linklayer"] == "ethernet"
    burst = float(re.fullmatch(r"(\d+)b/\d+", opts["burst"]).group(1))
    # tc turns the buffer (ticks) back into bytes at the rate, rounding to its own tick
    burst_want = max(rate_mbps * 1e6 / 8 * 1e-3, 10 * 1514)
    assert burst == pytest.approx(burst_want, rel=0.01)
