"""Three fake hosts on one machine (emulator.cluster.lab) and a cross-host link between two of them
(emulator.cluster.vxlan). What is checked is read from the kernel with ``ip`` and ``ping`` (argument
lists), never from what the product says it did:

* the underlay: MTU 1550 on every host (1522 bytes of ICMP pass with DF set, 1523 do not), and the
  shaper's 1 ms each way in every ping RTT between hosts (bounds computed here from the lab's delay);
* a VXLAN link: the device is in its node's namespace (not in the host's), carries 1500-byte packets
  unfragmented (ping -M do -s 1472 passes, 1473 does not), its frames leave through the host's underlay
  (the underlay's packet counter), and its RTT holds the underlay's delay both ways;
* the two other ways to make such a device work on this kernel too (created in the host and moved;
  created from the node's namespace with IFLA_LINK_NETNSID);
* a crash leaves nothing: the lab's process killed with SIGKILL takes its holder, namespaces and shaper
  daemon with it; ``clean(run_id)`` ends a lab whose process is still alive, a process inside a fake
  host included.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emulator import rtnl
from emulator.clean import clean
from emulator.cluster import vxlan as vx
from emulator.cluster.lab import UNDERLAY_IFINDEX, FakeHosts, LabConfig

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]
DELAY_MS = 1.0
#: The delay daemon arms its timer a little early and may release a packet up to ~0.1 ms before its time
#: (emulator.shaping.delayd, lead_us); a release is never later than this bound on a quiet machine plus the
#: wake-up, the VXLAN encapsulation and ping's own path, generous for a shared 2-core machine.
EARLY_MS = 0.1
LATE_MIN_MS = 0.6
LATE_MEDIAN_MS = 1.5
#: index of the VXLAN device: free in the node's namespace and in the host's (where ul0 is 2), for the way
#: that creates it there first
IFINDEX = 5


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with FakeHosts(f"t-lab-{os.getpid()}", LabConfig(n_hosts=3, delay_ms=DELAY_MS)) as fh:
        yield fh


def ping(lab: FakeHosts, ns: str, addr: str, count: int = 20, size: int = 56) -> tuple[int, list[float], str]:
    """(exit code, RTTs in ms, output) of ``ping -M do`` from namespace ``ns``."""
    r = lab.run(ns, ["ping", "-n", "-c", str(count), "-i", "0.02", "-W", "2",
                     "-M", "do", "-s", str(size), addr])
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", r.stdout)]
    return r.returncode, rtts, r.stdout + r.stderr


def link_json(lab: FakeHosts, ns: str) -> list[dict]:
    return json.loads(lab.run(ns, ["ip", "-j", "-d", "-s", "link", "show"]).stdout)


def check_rtt(rtts: list[float], count: int, want_ms: float = 2 * DELAY_MS) -> None:
    """``count`` answers, none faster than the ``want_ms`` of delay added on the way (less the daemon's early
    release), the fastest and the median within the late bounds of it."""
    assert len(rtts) == count, f"{len(rtts)} of {count} answers"
    assert min(rtts) >= want_ms - EARLY_MS, f"RTT {min(rtts):.3f} ms below the {want_ms} ms added on the way"
    assert min(rtts) <= want_ms + LATE_MIN_MS, f"min RTT {min(rtts):.3f} ms"
    assert statistics.median(rtts) <= want_ms + LATE_MEDIAN_MS, f"median RTT {statistics.median(rtts):.3f} ms"


def test_underlay_mtu_and_delay(lab):
    for h in range(3):
        (ul0,) = [d for d in link_json(lab, lab.host_name(h)) if d["ifname"] == "ul0"]
        assert ul0["mtu"] == 1550 and ul0["operstate"] == "UP"
    for src, dst in ((0, 1), (0, 2), (2, 1)):
        rc, rtts, out = ping(lab, lab.host_name(src), lab.address(dst), size=1550 - 28)
        assert rc == 0, out
        check_rtt(rtts, 20)
        rc, _, out = ping(lab, lab.host_name(src), lab.address(dst), count=1, size=1550 - 27)
        assert rc != 0 and "message too long" in out, out


def make_pair(lab: FakeHosts, tag: str, way: str, vni: int) -> tuple[str, str]:
    """Two node namespaces on hosts 0 and 1 joined by one VXLAN link (10.0.0.0/31), made ``way``."""
    a, b = f"na-{tag}", f"nb-{tag}"
    paths = lab.namespaces([a, b])
    for k, (h, other, path) in enumerate(((0, 1, paths[0]), (1, 0, paths[1]))):
        end = vx.VxlanEnd("x0", IFINDEX, vni, lab.address(h), lab.address(other), UNDERLAY_IFINDEX)
        host = rtnl.Rtnl(lab.host_path(h))
        node = rtnl.Rtnl(path)
        try:
            if way == "direct":  # the product's way
                vx.add_ends(host, [(end, path)], up=False)
            elif way == "moved":
                b1 = rtnl.Batch()
                b1.add(rtnl.RTM_NEWLINK, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL, vx.vxlan_body(end, None), "create")
                host.check(b1, "create in the host")
                fd = os.open(path, os.O_RDONLY)
                try:
                    b1 = rtnl.Batch()
                    b1.add(rtnl.RTM_NEWLINK, 0, rtnl.link_set_body(end.ifindex, None, fd), "move")
                    host.check(b1, "move to the node")
                finally:
                    os.close(fd)
            else:  # link-netnsid: sent in the node's namespace, naming the host's by an id given there
                fd = os.open(lab.host_path(h), os.O_RDONLY)
                try:
                    b1 = rtnl.Batch()
                    b1.add(vx.RTM_NEWNSID, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL, vx.nsid_body(fd, 7), "nsid")
                    node.check(b1, "nsid")
                finally:
                    os.close(fd)
                b1 = rtnl.Batch()
                b1.add(rtnl.RTM_NEWLINK, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL, vx.vxlan_body(end, None, 7), "create")
                node.check(b1, "create with link-netnsid")
            b1 = rtnl.Batch()
            b1.add(rtnl.RTM_NEWADDR, rtnl.NLM_F_CREATE, rtnl.addr_body(IFINDEX, (10 << 24) + k, 31), "address")
            b1.add(rtnl.RTM_NEWLINK, 0, rtnl.link_set_body(IFINDEX, True), "up")
            node.check(b1, "address and up")
        finally:
            host.close()
            node.close()
    return a, b


def test_vxlan_link_between_two_hosts(lab):
    a, b = make_pair(lab, "direct", "direct", 4242)
    host0 = {d["ifname"] for d in link_json(lab, "host-0")}
    assert host0 == {"lo", "ul0"}, host0  # the device is not in the host's namespace
    (x0,) = [d for d in link_json(lab, a) if d["ifname"] == "x0"]
    info = x0["linkinfo"]["info_data"]
    assert x0["linkinfo"]["info_kind"] == "vxlan" and info["id"] == 4242 and x0["mtu"] == 1500
    assert info["remote"] == lab.address(1) and info["local"] == lab.address(0) and info["port"] == 4789

    def ul0_tx() -> int:
        (ul0,) = [d for d in link_json(lab, "host-0") if d["ifname"] == "ul0"]
        return int(ul0["stats64"]["tx"]["packets"])

    before = ul0_tx()
    rc, rtts, out = ping(lab, a, "10.0.0.1", size=1472)
    assert rc == 0, out
    assert ul0_tx() - before >= 20  # every echo request left host 0 through its underlay
    check_rtt(rtts, 20)
    rc, _, out = ping(lab, a, "10.0.0.1", count=1, size=1473)
    assert rc != 0 and "mtu=1500" in out, out


def test_the_shaper_shapes_a_vxlan_end_as_a_veth_end(lab):
    # a cross-host link is shaped at each end on its egress (its peer is on another host): the project's
    # shaper, handed the VXLAN device as a port without a peer, adds its delay each way
    from emulator.shaping import LinkShape, Port

    a, b = make_pair(lab, "shaped", "direct", 4343)
    link_ms = 5.0
    lab.shaper.prepare_nodes([(a, lab.path(a)), (b, lab.path(b))], lab.ipr_of)
    lab.shaper.set([(Port(n, lab.path(n), "x0", IFINDEX), LinkShape(delay_ms=link_ms, rate_mbps=100.0))
                    for n in (a, b)], lab.ipr_of)
    rc, rtts, out = ping(lab, a, "10.0.0.1")
    assert rc == 0, out
    check_rtt(rtts, 20, 2 * (DELAY_MS + link_ms))


def test_the_underlay_delay_is_measured_between_fake_hosts(lab):
    from emulator.cluster.underlay import measure

    paths = measure([lab.address(1), lab.address(2)], count=30, netns=lab.host_path(0))
    for p in paths:
        assert p.received == 30, p.describe()
        # the lab adds DELAY_MS on each host's egress: one way is that, plus the veths and the bridge
        assert DELAY_MS - EARLY_MS / 2 <= p.one_way_ms <= DELAY_MS + LATE_MIN_MS / 2, p.describe()
        assert p.jitter_ms >= 0
    (gone,) = measure(["172.31.213.250"], count=2, netns=lab.host_path(0))  # no host there
    assert gone.received == 0 and gone.one_way_ms != gone.one_way_ms  # NaN


@pytest.mark.parametrize("way", ["moved", "link-netnsid"])
def test_the_other_ways_to_make_the_device_work_too(lab, way):
    a, _ = make_pair(lab, way.replace("link-", ""), way, 4300 + len(way))
    rc, rtts, out = ping(lab, a, "10.0.0.1", count=5)
    assert rc == 0 and len(rtts) == 5, out


_CHILD = """
import sys, time
from emulator.cluster.lab import FakeHosts
lab = FakeHosts(sys.argv[1]); lab.start()
print(lab.holder.pid, *getattr(lab.shaper, "pids", []), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_child(run_id: str) -> tuple[subprocess.Popen[str], list[int]]:
    child = subprocess.Popen([sys.executable, "-c", _CHILD, run_id], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    pids = [int(x) for x in child.stdout.readline().split()]
    assert pids and all(_alive(p) for p in pids)
    return child, pids


def _wait_gone(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def test_a_killed_lab_leaves_nothing():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    run_id = f"t-labkill-{os.getpid()}"
    child, pids = _start_child(run_id)
    ns_path = f"/proc/{pids[0]}/root/run/satnetem-netns/host-0"
    assert os.path.exists(ns_path)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert _wait_gone(pids) == []  # the holder and the shaper's daemon died with it
    assert not os.path.exists(ns_path)
    report = clean(run_id)
    assert report.killed == [] and report.namespaces == 0 and report.ok


def test_clean_ends_a_live_lab_and_what_runs_in_it():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    run_id = f"t-labclean-{os.getpid()}"
    child, pids = _start_child(run_id)
    try:
        holder = pids[0]
        ns = f"/proc/{holder}/root/run/satnetem-netns/host-1"
        inside = subprocess.Popen(["nsenter", f"--net={ns}", "--", "sleep", "600"])  # a process in a fake host
        time.sleep(0.2)
        report = clean(run_id)
        assert report.ok and holder in report.killed and inside.pid in report.killed
        assert _wait_gone([inside.pid]) == []  # (clean reaped it: its exit status is gone with it)
        assert _wait_gone([holder]) == []
    finally:
        child.kill()
        child.wait()
    assert _wait_gone(pids) == []
