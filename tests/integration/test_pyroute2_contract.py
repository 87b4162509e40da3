"""What satnetem needs of pyroute2, checked on a real namespace: the reason for setup.cfg's version range.

* :func:`emulator.netns.iproute_in` makes an ``IPRoute`` inside a node's namespace by entering it
  (setns) in the calling thread; the emulator then uses that object from other threads (the clock of
  ``satnetem cli`` and of the scripting API applies steps, hence the netem backend's tc changes, off the
  thread that built the network). pyroute2 0.7 and 0.8 keep the one socket made at construction.
  pyroute2 0.9 (asyncio core) opens a new socket per calling thread, in that thread's namespace: from
  the clock thread the object then speaks to the host's namespace, and an ``ifindex`` meant for a node
  names a host interface. The first test fails on 0.9.7 for that reason (seen: the host's ``eth0``).
* The netem backend's tc requests no longer go through pyroute2 (raw rtnetlink batches, as the routes and
  the userspace backend's): its htb half is checked here against iproute2's ``tc`` all the same.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading

import pytest

pytestmark = pytest.mark.root

_NS = f"h12pr{os.getpid() % 100000}"


@pytest.fixture
def namespace():
    """A fresh named namespace with a veth pair pra/prb inside; yields its path."""
    if os.geteuid() != 0:
        pytest.skip("needs root to build network namespaces")
    subprocess.run(["ip", "netns", "add", _NS], check=True)
    try:
        subprocess.run(["ip", "-n", _NS, "link", "add", "name", "pra", "type", "veth", "peer", "name", "prb"],
                       check=True)
        yield f"/run/netns/{_NS}"
    finally:
        subprocess.run(["ip", "netns", "del", _NS], check=False)


def _names(ipr) -> set[str]:
    return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def test_iproute_in_speaks_to_its_namespace_from_any_thread(namespace):
    from emulator.netns import iproute_in

    ours = {"lo", "pra", "prb"}
    ipr = iproute_in(namespace, "contract")
    try:
        assert _names(ipr) == ours
        seen: dict[str, object] = {}

        def other() -> None:
            try:
                seen["names"] = _names(ipr)
            except Exception as e:  # noqa: BLE001 - shown in the assertion below
                seen["names"] = e

        t = threading.Thread(target=other)
        t.start()
        t.join(timeout=30)
        assert seen.get("names") == ours, (
            f"from another thread the IPRoute made in {namespace} lists {seen.get('names')!r}: pyroute2 "
            f"{_version()} does not keep its socket's namespace across threads (see setup.cfg)")
    finally:
        ipr.close()


@pytest.mark.parametrize("rates_mbps", [(100.0, 20_000.0), (1_000.0, 10.0), (40_000.0, 50.0)])
def test_netem_backends_htb_reads_back_in_tc(namespace, rates_mbps):
    """The netem backend's htb root and class, as this project encodes them (raw rtnetlink, 64-bit rates in
    TCA_HTB_RATE64 above 34.36 Gbit/s), added then changed in place: iproute2's ``tc``, an implementation
    independent of ours, reads rate, ceil and burst back. (netem itself needs sch_netem:
    tests/integration/test_netem_vm.py runs the netem backend's tests in a stock-kernel VM.)"""
    from emulator import rtnl
    from emulator.shaping.base import LinkShape, htb_class_body, htb_qdisc_body, token_bucket

    rt = rtnl.Rtnl(namespace, "contract", private=True)
    try:
        index = int(subprocess.run(["ip", "netns", "exec", _NS, "cat", "/sys/class/net/pra/ifindex"],
                                   capture_output=True, text=True, check=True).stdout)
        for k, mbps in enumerate(rates_mbps):
            shape = LinkShape(delay_ms=1.0, rate_mbps=mbps)
            b = rtnl.Batch()
            if k == 0:
                b.add(rtnl.RTM_NEWQDISC, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL, htb_qdisc_body(index), "htb root")
            b.add(rtnl.RTM_NEWTCLASS, rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE if k == 0 else 0,
                  htb_class_body(index, shape), "htb class")
            assert rt.run(b) == []
            out = subprocess.run(["ip", "netns", "exec", _NS, "tc", "class", "show", "dev", "pra"],
                                 capture_output=True, text=True, check=True).stdout
            m = re.search(r"class htb 1:1 .*?rate (\d+(?:\.\d+)?)([KMG]?)bit ceil (\d+(?:\.\d+)?)([KMG]?)bit "
                          r"burst (\d+(?:\.\d+)?)([KMG]?)b", out)
            assert m, out
            scale = {"": 1e-6, "K": 1e-3, "M": 1.0, "G": 1e3}
            assert float(m.group(1)) * scale[m.group(2)] == pytest.approx(mbps, rel=1e-3), out
            assert float(m.group(3)) * scale[m.group(4)] == pytest.approx(mbps, rel=1e-3), out
            # tc prints the burst from the buffer time at the rate (rounded to its units)
            burst = float(m.group(5)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m.group(6)]
            assert burst == pytest.approx(token_bucket(shape).burst_bytes, rel=0.02), out
    finally:
        rt.close()


def _version() -> str:
    from importlib.metadata import version

    return version("pyroute2")
