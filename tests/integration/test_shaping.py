"""Shaping backends on a real chain of namespaces h1 - r1 - r2 - h2, checked with ping and iperf3.

The same tests run on both backends; ``netem`` skips with the kernel's answer when sch_netem is missing
(it runs in the qemu VM harness). Every direction of every hop is shaped (6 ports). The ports name their
``peer`` as the emulator does (the userspace backend then holds packets at the receiving end); the
userspace backend also runs once without peers (``userspace-egress``: packets held as they leave).
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
from test_network import VM_NOISE_MS_PER_TRAVERSAL, vm_netem_overhead_ms

from emulator.netns import entered, iproute_in
from emulator.shaping import make_shaper, probe_netem
from emulator.shaping.base import LinkShape, Port
from emulator.shaping.delayd import DEFAULT_RT_PRIORITY, FD_MARGIN, NAMESPACES_PER_SHARD
from emulator.shaping.userspace import UserspaceShaper

pytestmark = pytest.mark.root

_TAG = f"csh{os.getpid() % 100000}"
_NODES = ("h1", "r1", "r2", "h2")
# (left node, left ifname, left address, right node, right ifname, right address) per hop
_HOPS = (
    ("h1", "h1-r1", "10.77.1.1", "r1", "r1-h1", "10.77.1.2"),
    ("r1", "r1-r2", "10.77.2.1", "r2", "r2-r1", "10.77.2.2"),
    ("r2", "r2-h2", "10.77.3.1", "h2", "h2-r2", "10.77.3.2"),
)
_ROUTES = {  # node -> [(dst, gateway)]
    "h1": [("0.0.0.0/0", "10.77.1.2")],
    "r1": [("10.77.3.0/24", "10.77.2.2")],
    "r2": [("10.77.1.0/24", "10.77.2.1")],
    "h2": [("0.0.0.0/0", "10.77.3.1")],
}
H2_ADDR = "10.77.3.2"


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to build network namespaces")


def _ns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _daemon_pids() -> set[int]:
    pids = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if f.read().startswith(b"emulator.shaping.delayd"):
                        pids.add(int(d))
            except OSError:
                pass
    return pids


@dataclass
class Chain:
    names: dict[str, str]  # node -> netns name
    iprs: dict[str, object] = field(default_factory=dict)
    ports: list[Port] = field(default_factory=list)  # the 6 sending ends, without peers
    peered: list[Port] = field(default_factory=list)  # the same, each naming the other end of its veth

    def path(self, node: str) -> str:
        return f"/run/netns/{self.names[node]}"

    def ipr_of(self, node: str):
        return self.iprs[node]

    def exec_argv(self, node: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.names[node], *argv]


@pytest.fixture(scope="module")
def chain():
    _require_root()
    names = {n: f"{_TAG}-{n}" for n in _NODES}
    ch = Chain(names)
    try:
        for n in _NODES:
            subprocess.run(["ip", "netns", "add", names[n]], check=True)
            # IPv4 only, as in the emulator: IPv6's own chatter (router solicitations, MLD reports) at
            # unpredictable times would reach the daemon and upset the tests that count its packets
            for key in ("all", "default"):
                with entered(ch.path(n), n), open(f"/proc/sys/net/ipv6/conf/{key}/disable_ipv6", "w") as f:
                    f.write("1")
            ch.iprs[n] = iproute_in(ch.path(n), n)
        for left, lif, laddr, right, rif, raddr in _HOPS:
            ipl = ch.iprs[left]
            ipl.link("add", ifname=lif, kind="veth", peer={"ifname": rif, "net_ns_fd": names[right]})
            for node, ifname, addr in ((left, lif, laddr), (right, rif, raddr)):
                ipr = ch.iprs[node]
                idx = ipr.link_lookup(ifname=ifname)[0]
                ipr.addr("add", index=idx, address=addr, prefixlen=24)
                ipr.link("set", index=idx, state="up")
                ch.ports.append(Port(node, ch.path(node), ifname, idx))
            left_end, right_end = ch.ports[-2:]
            ch.peered += [replace(left_end, peer=right_end), replace(right_end, peer=left_end)]
        for n in _NODES:
            ipr = ch.iprs[n]
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            for dst, gw in _ROUTES[n]:
                ipr.route("add", dst=dst, gateway=gw)
            with entered(ch.path(n), n), open("/proc/sys/net/ipv4/ip_forward", "w") as f:
                f.write("1" if n.startswith("r") else "0")
        yield ch
    finally:
        for ipr in ch.iprs.values():
            ipr.close()
        for n in _NODES:
            if names[n] in _ns_list():
                subprocess.run(["ip", "netns", "del", names[n]], check=False)
        # Ours only: other runs on this machine may add theirs meanwhile (conftest checks the session).
        assert not set(names.values()) & _ns_list(), "namespace left behind"


@dataclass
class Shaped:
    """A backend under test and the ports it is given (with or without peers)."""

    sh: object
    ports: list[Port]
    kind: str

    def set_all(self, chain: Chain, shape: LinkShape) -> None:
        self.sh.set([(p, shape) for p in self.ports], chain.ipr_of)

    def port(self, ifname: str) -> Port:
        return next(p for p in self.ports if p.ifname == ifname)


@pytest.fixture(params=["userspace-peer", "userspace-egress", "netem-peer"])
def shaper(request, chain):
    kind, mode = request.param.split("-")
    if kind == "netem":
        ok, detail = probe_netem()
        if not ok:
            pytest.skip(f"kernel has no sch_netem ({detail}); runs in the qemu VM harness")
    sh, _reason = make_shaper(kind)
    pids: set[int] = set()
    try:
        for n in _NODES:
            sh.prepare_node(n, chain.path(n), chain.iprs[n])
        pids = set(getattr(sh, "pids", []))
        yield Shaped(sh, chain.peered if mode == "peer" else chain.ports, request.param)
    finally:
        sh.close()
        # Our own daemon only: other runs on this machine may have theirs.
        assert not pids & _daemon_pids(), "delay daemon left running"


def _shape_all(sh: Shaped, chain: Chain, shape: LinkShape) -> None:
    sh.set_all(chain, shape)


def _ping(chain: Chain, count: int, interval_s: float = 0.02, wait_s: int = 2,
          expect_replies: bool = True) -> tuple[float, float, str]:
    """Ping h2 from h1; returns (loss %, median rtt ms or nan, full output).

    With ``expect_replies`` ping waits (up to a deadline of a few seconds) for every reply, so an echo
    delayed by a busy machine is not counted as lost.
    The median, not ping's average: on a loaded machine a few echoes are late by milliseconds (the daemon
    or ping itself not being scheduled), which says nothing about the configured delay.
    """
    deadline_s = int(count * interval_s + wait_s + 3)
    argv = ["ping", "-n", "-c", str(count), "-i", str(interval_s), "-W", str(wait_s), H2_ADDR]
    if expect_replies:
        argv[1:1] = ["-w", str(deadline_s)]
    out = subprocess.run(chain.exec_argv("h1", *argv), check=False, capture_output=True, text=True,
                         timeout=deadline_s + 10).stdout
    replies = {int(q): float(t) for q, t in re.findall(r"icmp_seq=(\d+) ttl=\d+ time=([\d.]+) ms", out)}
    # Loss among the ``count`` requests asked for (with -w ping sends until ``count`` replies came, so the
    # one in flight then would count as lost in its own summary).
    loss = 100.0 * sum(1 for q in range(1, count + 1) if q not in replies) / count
    rtts = sorted(replies[q] for q in range(1, count + 1) if q in replies)
    return loss, rtts[len(rtts) // 2] if rtts else float("nan"), out


@pytest.mark.realtime
def test_rtt_equals_sum_of_configured_delays(shaper, chain):
    _shape_all(shaper, chain, LinkShape(delay_ms=0.0, rate_mbps=1000.0))
    _ping(chain, 5)  # ARP and route caches warm
    loss0, base_ms, _ = _ping(chain, 40)
    _shape_all(shaper, chain, LinkShape(delay_ms=5.0, rate_mbps=1000.0))
    loss5, rtt_ms, _ = _ping(chain, 40)
    expected_ms = 6 * 5.0
    if os.environ.get("SATNETEM_IN_VM") == "1":
        # qemu's emulated CPU adds timer latency to every delayed traversal (not in the 0 ms baseline),
        # growing with the wait: measured with iproute2's netem at the same 5 ms and added; a real kernel
        # has none of it
        expected_ms += 6 * vm_netem_overhead_ms(5.0)
    # and that latency varies between measurement windows, in the VM only
    allowance_ms = 6 * VM_NOISE_MS_PER_TRAVERSAL if os.environ.get("SATNETEM_IN_VM") == "1" else 0.0
    assert loss0 == 0 and loss5 == 0
    assert abs((rtt_ms - base_ms) - expected_ms) <= max(1.0, 0.03 * expected_ms) + allowance_ms, (base_ms, rtt_ms)


def test_delay_changes_in_place_without_loss_or_reordering(shaper, chain):
    # the base RTT on the chain before the backend shapes anything: a fixed error per hop in the shaper
    # (a 0 ms delay held for 1 ms) would be part of a base measured through it, and cancel out below
    _ping(chain, 3)
    _, base_ms, _ = _ping(chain, 10)
    _shape_all(shaper, chain, LinkShape(delay_ms=0.0, rate_mbps=1000.0))
    _shape_all(shaper, chain, LinkShape(delay_ms=1.0, rate_mbps=1000.0))
    # how late this machine wakes a real-time task at the daemon's priority meanwhile: the test's own
    # measure of what scheduling adds to each release (not the daemon's report of itself). One sleeper
    # pinned to each CPU, for the whole ping: a CPU can stop for a few ms on its own (under a CPU hog this
    # VM lost one CPU at a time for ~4.6 ms every few seconds, while the other ran on), and a single
    # sleeper on the other CPU saw nothing of it (seen: an echo 4 ms over its bound, the sleeper's worst
    # wake-up 0.1 ms).
    wakes = [subprocess.Popen([sys.executable, "-c", _WAKEUP_PROBE, str(DEFAULT_RT_PRIORITY), "3500", "1.0",
                               str(cpu)], stdout=subprocess.PIPE, text=True) for cpu in os.sched_getaffinity(0)]
    # 10 ms interval, RTT up to 120 ms: a dozen echoes in flight when the delay shrinks from 20 to 2 ms.
    # -w: wait for every reply (up to 10 s) rather than ping's 2 x RTT after the last request.
    # chrt: ping stamps a request's send time in user space before sendmsg; preempted in between by another
    # process (under a CPU hog: one scheduler slice), it reports the echo ~5 ms long (seen: 125 ms for 120,
    # the daemon late by 0.2-0.4 ms at most). At real-time priority below the daemon's it is not preempted.
    proc = subprocess.Popen(chain.exec_argv("h1", "chrt", "-f", str(max(1, DEFAULT_RT_PRIORITY - 5)), "ping", "-n",
                                            "-c", "250", "-w", "10", "-i", "0.01", "-W", "2", H2_ADDR),
                            stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        _shape_all(shaper, chain, LinkShape(delay_ms=20.0, rate_mbps=1000.0))
        time.sleep(0.8)
        _shape_all(shaper, chain, LinkShape(delay_ms=2.0, rate_mbps=1000.0))
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wake_max_ms = max(int(w.communicate(timeout=30)[0]) for w in wakes) / 1e6
    replies = [(int(s), float(t)) for s, t in re.findall(r"icmp_seq=(\d+) ttl=\d+ time=([\d.]+) ms", out)]
    replies = [(q, t) for q, t in replies if q <= 250]  # -w may send one or two more
    seqs = [q for q, _ in replies]
    assert "DUP" not in out, "replies duplicated"
    if shaper.kind.startswith("userspace"):
        assert seqs == sorted(seqs), "replies reordered"
    # netem keeps its queue ordered by send time, so when the delay shrinks, later packets overtake the
    # ones already waiting (kernel behaviour): for netem only loss and duplicates are checked here
    assert sorted(seqs) == list(range(1, 251)), f"lost: {sorted(set(range(1, 251)) - set(seqs))}"
    rtts = [t for _, t in replies]
    # While the long delay held, echoes took 6 x 20 ms: never less (the daemon releases at most 0.2 ms
    # early per hop), and more only by the base RTT, scheduling noise and, per hop, the longest wake-up
    # delay the independent real-time sleepers saw on any CPU over the same seconds (a busy machine shows
    # there).
    slack_ms = base_ms + 2.0 + 6 * wake_max_ms
    worst = max(rtts)
    if os.environ.get("SATNETEM_IN_VM") == "1":
        slack_ms += 10.0  # qemu's emulated CPU: a worst single sample jitters by several ms under load
        # ... and a single echo can stall far longer: on Debian's 6.1.0-57 kernel under TCG the worst of
        # the 250 was 139 ms (19 ms over) with nothing else running. The 98th percentile (the worst but 5)
        # still lies among the echoes of the 20 ms stretch, about 60 of them.
        worst = sorted(rtts)[-6]
    assert 120.0 - 1.5 <= worst <= 120.0 + slack_ms, (worst, max(rtts), base_ms, wake_max_ms)
    # At the end, 6 x 2 ms: the median of the last 20 is robust to one echo delayed by a busy machine.
    tail = sorted(rtts[-20:])[10]
    vm_ms = 6 * vm_netem_overhead_ms(2.0) if os.environ.get("SATNETEM_IN_VM") == "1" else 0.0  # as above
    assert 12.0 - 1.0 <= tail <= 12.0 + base_ms + 2.0 + vm_ms, (rtts[-20:], base_ms, vm_ms)


def test_loss_100_drops_everything_and_0_restores(shaper, chain):
    _shape_all(shaper, chain, LinkShape(delay_ms=1.0, rate_mbps=1000.0))
    h1_out = shaper.port("h1-r1")
    shaper.sh.set([(h1_out, LinkShape(delay_ms=1.0, rate_mbps=1000.0, loss_pct=100.0))], chain.ipr_of)
    loss, _, _ = _ping(chain, 20, wait_s=1, expect_replies=False)
    assert loss == 100.0
    shaper.sh.set([(h1_out, LinkShape(delay_ms=1.0, rate_mbps=1000.0, loss_pct=0.0))], chain.ipr_of)
    loss, _, _ = _ping(chain, 20)
    assert loss == 0.0


def _iperf3_tcp_mbps(chain: Chain, port: str, seconds: int = 4) -> float:
    server = subprocess.Popen(chain.exec_argv("h2", "iperf3", "-s", "-1", "-p", port),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        res = subprocess.run(chain.exec_argv("h1", "iperf3", "-c", H2_ADDR, "-p", port, "-t", str(seconds),
                                             "-O", "1", "-J"), check=True, capture_output=True, text=True,
                             timeout=seconds + 30)
        return json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        server.kill()
        server.wait()


def test_rate_limits_an_iperf3_flow(shaper, chain):
    _shape_all(shaper, chain, LinkShape(delay_ms=1.0, rate_mbps=1000.0))
    shaper.sh.set([(shaper.port("r1-r2"), LinkShape(delay_ms=1.0, rate_mbps=20.0))], chain.ipr_of)
    mbps = _iperf3_tcp_mbps(chain, "5301")
    assert 0.8 * 20.0 <= mbps <= 1.05 * 20.0, mbps


def test_tcp_fills_a_shaped_path_when_ports_name_their_peer(shaper, chain):
    """The reason for holding at the receiving end: TCP is not throttled by TCP Small Queues."""
    if shaper.kind == "userspace-egress":
        pytest.skip("held at the sender, TCP gets a few Mbit/s (TCP Small Queues); see the benchmark")
    if shaper.kind.startswith("netem"):
        # netem delays inside the kernel (no TSQ issue); its tests run under qemu TCG, where throughput
        # measures the emulated CPU rather than the shaping.
        pytest.skip("concerns the userspace backend's hold only")
    _shape_all(shaper, chain, LinkShape(delay_ms=5.0, rate_mbps=200.0))
    mbps = _iperf3_tcp_mbps(chain, "5302")
    # 30 ms RTT, 200 Mbit/s: a working path gets close to the rate; the egress hold got under 10.
    assert 0.5 * 200.0 <= mbps <= 1.05 * 200.0, mbps


def _held_interfaces(sh) -> int:
    return sh.stats()["held_interfaces"]


def _queued_settled(sh, still_s: float = 0.3, timeout_s: float = 5.0) -> int:
    """The daemon's count of queued packets once it has not changed for ``still_s``."""
    q, since, end = sh.stats()["queued"], time.monotonic(), time.monotonic() + timeout_s
    while time.monotonic() - since < still_s and time.monotonic() < end:
        time.sleep(0.05)
        now = sh.stats()["queued"]
        if now != q:
            q, since = now, time.monotonic()
    return q


def test_userspace_holds_only_shaped_ports_and_forget_moves_cleanly(chain):
    """Unshaped interfaces are not detoured through the daemon; forget and a change of peer (a handover
    of the far end) leave the hold exactly where the port's shaping says."""
    _require_root()
    sh, _ = make_shaper("userspace")
    try:
        for n in _NODES:
            sh.prepare_node(n, chain.path(n), chain.iprs[n])
        zero = LinkShape(delay_ms=0.0, rate_mbps=1000.0)
        five = LinkShape(delay_ms=5.0, rate_mbps=1000.0)
        sh.set([(p, zero) for p in chain.peered], chain.ipr_of)
        _ping(chain, 3)

        def added_ms(ports: list[Port]) -> float:
            """RTT with ``ports`` at 5 ms minus the RTT with the same ports held at 0 ms: each held
            traversal costs the daemon's processing on top of its delay, so the baseline is taken with
            exactly the holds being measured."""
            sh.set([(p, zero) for p in ports], chain.ipr_of)
            loss0, base_ms, _ = _ping(chain, 20)
            sh.set([(p, five) for p in ports], chain.ipr_of)
            loss, rtt_ms, _ = _ping(chain, 20)
            assert loss0 == 0 and loss == 0
            return rtt_ms - base_ms

        hop1 = [p for p in chain.peered if p.ifname in ("h1-r1", "r1-h1")]
        for p in chain.peered:
            sh.forget(p)
        assert _held_interfaces(sh) == 0
        sh.set([(p, five) for p in hop1], chain.ipr_of)
        assert _held_interfaces(sh) == 2
        # r2 -> h2 crosses no shaped port: none of its packets reaches the daemon. An echo of the pings above
        # may still be on its way (ping -w stops at its count of replies with one more request sent, and a
        # busy machine delays the replies): counted from when the count has stood still for 0.3 s.
        q0 = _queued_settled(sh)
        r2_ping = subprocess.run(chain.exec_argv("r2", "ping", "-n", "-c", "5", "-i", "0.02", H2_ADDR),
                                 check=False, capture_output=True, text=True, timeout=20)
        assert r2_ping.returncode == 0 and sh.stats()["queued"] == q0
        assert abs(added_ms(hop1) - 10.0) <= 1.0
        assert sh.stats()["queued"] >= q0 + 2 * 20

        h1_out, r1_out = (next(p for p in hop1 if p.ifname == n) for n in ("h1-r1", "r1-h1"))
        sh.forget(h1_out)
        assert _held_interfaces(sh) == 1
        assert abs(added_ms([r1_out]) - 5.0) <= 1.0
        sh.forget(h1_out)  # twice is harmless

        # The same port held at its own egress (no peer), then moved back to the receiving end.
        sh.set([(replace(h1_out, peer=None), five)], chain.ipr_of)
        assert _held_interfaces(sh) == 2
        assert abs(added_ms([replace(h1_out, peer=None), r1_out]) - 10.0) <= 1.0
        sh.set([(h1_out, five)], chain.ipr_of)
        assert _held_interfaces(sh) == 2  # not 3: the egress hold was dropped
        assert abs(added_ms([h1_out, r1_out]) - 10.0) <= 1.0
    finally:
        sh.close()


def test_close_leaves_no_process_and_no_rule(chain):
    _require_root()
    sh, _ = make_shaper("userspace")
    try:
        for n in _NODES:
            sh.prepare_node(n, chain.path(n), chain.iprs[n])
        sh.set([(p, LinkShape(delay_ms=5.0, rate_mbps=1000.0)) for p in chain.peered], chain.ipr_of)
        pids = sh.pids
        assert pids and _ping(chain, 5)[1] > 25.0
    finally:
        sh.close()
    sh.close()  # idempotent
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
    # With the queue rule still in place and nobody bound to the queue, every packet would be dropped;
    # with it gone the path is fast again.
    loss, rtt_ms, _ = _ping(chain, 10)
    assert loss == 0.0 and rtt_ms < 5.0


# --------------------------------------------------------------------------- the compiled daemon's own checks


def _prepared(chain: Chain, **kwargs) -> UserspaceShaper:
    sh = UserspaceShaper(**kwargs)
    for n in _NODES:
        sh.prepare_node(n, chain.path(n), chain.iprs[n])
    return sh


def _peered(chain: Chain, ifname: str) -> Port:
    return next(p for p in chain.peered if p.ifname == ifname)


def _udp_probes_received(chain: Chain, seed: int, loss_pct: float, count: int) -> set[int]:
    """Send ``count`` numbered UDP probes h1 -> h2 with h1 -> r1 lossy; the numbers that arrived.

    Unconnected sockets with fixed ports: the kernel sends ID 0 on such (DF) datagrams, so two runs send
    byte-identical packets and only the interleaving with other work differs between them."""
    sh = _prepared(chain, seed=seed)
    socks: list[socket.socket] = []
    try:
        hop = _peered(chain, "h1-r1")
        sh.set([(hop, LinkShape(delay_ms=1.0, rate_mbps=1000.0))], chain.ipr_of)
        _ping(chain, 3)  # neighbours resolved before the count starts
        sh.set([(hop, LinkShape(delay_ms=1.0, rate_mbps=1000.0, loss_pct=loss_pct))], chain.ipr_of)
        with entered(chain.path("h2"), "h2"):
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        socks.append(rx)
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        rx.bind((H2_ADDR, 7777))
        with entered(chain.path("h1"), "h1"):
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        socks.append(tx)
        tx.bind(("10.77.1.1", 7778))
        for i in range(count):
            tx.sendto(struct.pack("!Q", i) + bytes(24), (H2_ADDR, 7777))
            time.sleep(0.0005)
        got: set[int] = set()
        rx.settimeout(1.0)
        try:
            while True:
                got.add(struct.unpack("!Q", rx.recv(64)[:8])[0])
        except TimeoutError:
            pass
        return got
    finally:
        for s in socks:
            s.close()
        sh.close()


def test_same_seed_drops_the_same_packets(chain):
    _require_root()
    count, loss = 400, 0.3
    first = _udp_probes_received(chain, 7, 100 * loss, count)
    again = _udp_probes_received(chain, 7, 100 * loss, count)
    other = _udp_probes_received(chain, 8, 100 * loss, count)
    assert first == again, f"dropped only once: {sorted(first ^ again)}"
    # another seed draws other packets (equal sets by chance: probability ~ 0)
    assert first != other
    # and the rate is the link's: within 5 standard deviations of the binomial count
    sigma = math.sqrt(count * loss * (1 - loss))
    for got in (first, other):
        assert abs((count - len(got)) - count * loss) <= 5 * sigma, count - len(got)


def test_tcp_retransmissions_get_through_a_lossy_link(chain):
    """A retransmitted segment carries a new IP ID, so it draws again, and a resent SYN-ACK (ID 0, the
    same bytes but its time stamp) counts as a repeat and draws again too: a connection and a transfer
    through 10 % loss each way complete instead of stalling on a packet dropped forever (before the
    repeat count, about one run in six timed out on a SYN-ACK)."""
    _require_root()
    sh = _prepared(chain, seed=3)
    payload = os.urandom(2 << 20)
    try:
        lossy = LinkShape(delay_ms=1.0, rate_mbps=1000.0, loss_pct=10.0)
        sh.set([(_peered(chain, "h1-r1"), lossy), (_peered(chain, "r1-h1"), lossy)], chain.ipr_of)
        with entered(chain.path("h2"), "h2"):
            srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.bind((H2_ADDR, 7790))
        srv.listen(1)
        srv.settimeout(30)
        received = bytearray()

        def serve() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(60)
                while chunk := conn.recv(1 << 16):
                    received.extend(chunk)

        t = threading.Thread(target=serve)
        t.start()
        with entered(chain.path("h1"), "h1"):
            cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        cli.settimeout(60)
        start = time.monotonic()
        cli.connect((H2_ADDR, 7790))
        cli.sendall(payload)
        cli.close()
        t.join(timeout=90)
        srv.close()
        assert bytes(received) == payload, (len(received), time.monotonic() - start)
    finally:
        sh.close()


SO_TIMESTAMPNS = 35  # <asm-generic/socket.h> (socket module lacks it)
ETH_P_ALL = 0x0003  # only ETH_P_ALL taps see outgoing packets


def _tap(chain: Chain, node: str, ifname: str) -> socket.socket:
    """An AF_PACKET socket on ``node``'s ``ifname`` with kernel receive time stamps (ns, realtime)."""
    with entered(chain.path(node), node):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((ifname, ETH_P_ALL))
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.setblocking(False)
    return s


def _echo_request_times(tap: socket.socket) -> dict[tuple[int, int], int]:
    """(ICMP id, seq) -> kernel time stamp (ns) of each echo request the tap saw leave."""
    out = {}
    while True:
        try:
            data, anc, _flags, addr = tap.recvmsg(256, 256)
        except BlockingIOError:
            return out
        ip = data[14:]
        if addr[2] != socket.PACKET_OUTGOING or data[12:14] != b"\x08\x00" or len(ip) < 28 or ip[9] != 1:
            continue
        icmp = ip[(ip[0] & 15) * 4:]
        if icmp[0] != 8:
            continue
        for level, kind, blob in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = struct.unpack("qq", blob[:16])
                out[struct.unpack("!HH", icmp[4:8])] = sec * 1_000_000_000 + nsec


def _transit_ns(chain: Chain, count: int, interval_s: float = 0.01) -> list[int]:
    """Time each of ``count`` echo requests took from leaving h1 (h1-r1) to leaving r1 (r1-r2), ns."""
    taps = [_tap(chain, "h1", "h1-r1"), _tap(chain, "r1", "r1-r2")]
    try:
        _ping(chain, count, interval_s=interval_s)
        t_in, t_out = (_echo_request_times(t) for t in taps)
    finally:
        for t in taps:
            t.close()
    return [t_out[k] - t_in[k] for k in t_in if k in t_out]


def _quantile(xs: list[int], q: float) -> int:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


# A real-time sleeper beside the daemon, at its priority: how late the machine wakes such a task (the
# kernel here is PREEMPT_NONE, so another process's long system call holds a CPU; and the hypervisor takes
# the virtual CPUs away now and then: /proc/stat's steal column). Prints its quantile argv[3]
# (default 0.99; 1.0: the largest), ns.
_WAKEUP_PROBE = """
import os, sys, time
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(sys.argv[1])))
if len(sys.argv) > 4:
    os.sched_setaffinity(0, {int(sys.argv[4])})
n, late, t = int(sys.argv[2]), [], time.monotonic_ns()
for _ in range(n):
    t += 1_000_000
    if (d := t - time.monotonic_ns()) > 0:
        time.sleep(d / 1e9)
    late.append(time.monotonic_ns() - t)
q = float(sys.argv[3]) if len(sys.argv) > 3 else 0.99
print(sorted(late)[min(n - 1, int(q * n))])
"""

#: Echo requests timed on the wire while held, and how many of them may come later than the bound below.
#: The bound holds the probe's p99, so by definition 1% of the machine's wake-ups exceed it; a packet's
#: release is one such wake-up. With a true 1% share, 25 or more of 1,000 exceed it with probability 4e-5;
#: a daemon releasing 3% of its packets late fails with probability 0.85, 5% always. (Comparing the second
#: largest of 200 packets with the probe's p99, as before, failed 59% of the time on identical tails: CI
#: did, on a machine whose stalls set the tail.)
HELD_PACKETS, HELD_LATE_ALLOWED = 1000, 25


def test_held_time_measured_on_the_wire(chain):
    """One 5 ms hop, held at r1's ingress: the time from h1's egress to r1's egress, taken by AF_PACKET
    taps (the kernel's time stamps, outside the daemon), is 5 ms plus what forwarding costs unshaped.
    Late: at most HELD_LATE_ALLOWED packets exceed 200 us plus the unshaped forwarding time's own spread
    (p99 - median) plus the p99 wake-up latency of an independent real-time sleeper measured meanwhile (what
    the machine itself adds). Never early by more than the daemon's 0.2 ms lead plus the spread below the
    median."""
    _require_root()
    sh = _prepared(chain)
    try:
        hop = _peered(chain, "h1-r1")
        _ping(chain, 3)
        base = _transit_ns(chain, 400, interval_s=0.005)  # not held: pure forwarding
        sh.set([(hop, LinkShape(delay_ms=5.0, rate_mbps=1000.0))], chain.ipr_of)
        probe = subprocess.Popen([sys.executable, "-c", _WAKEUP_PROBE, str(DEFAULT_RT_PRIORITY), "2500"],
                                 stdout=subprocess.PIPE, text=True)
        held = _transit_ns(chain, HELD_PACKETS, interval_s=0.002)
        wakeup_p99_ns = int(probe.communicate(timeout=30)[0])
    finally:
        sh.close()
    assert len(base) >= 390 and len(held) >= HELD_PACKETS - 10, (len(base), len(held))
    base_med = statistics.median(base)
    excess = [d - 5_000_000 - base_med for d in held]
    late_bound = 200_000 + (_quantile(base, 0.99) - base_med) + wakeup_p99_ns
    early_bound = 200_000 + (base_med - min(base))
    late = sorted(x for x in excess if x > late_bound)
    assert len(late) <= HELD_LATE_ALLOWED, (len(late), late_bound, late[-5:], base_med, wakeup_p99_ns)
    assert min(excess) >= -early_bound, (min(excess), early_bound)


def test_ports_held_at_arrival_share_one_stamping_filter_per_namespace(chain):
    """As tc lists them: r1's two arrival interfaces each have an ingress qdisc bound to the same shared
    block, the block carries one bpf filter, and the rate sits in a tbf root on every sending interface."""
    _require_root()
    sh = _prepared(chain)
    try:
        sh.set([(p, LinkShape(delay_ms=1.0, rate_mbps=100.0)) for p in chain.peered], chain.ipr_of)

        def tc_json(*args: str) -> list[dict]:
            out = subprocess.run(chain.exec_argv("r1", "tc", "-j", *args), capture_output=True, text=True,
                                 check=True).stdout
            return json.loads(out) if out.strip() else []

        blocks = set()
        for ifname in ("r1-h1", "r1-r2"):
            qd = tc_json("qdisc", "show", "dev", ifname)
            ingress = [q for q in qd if q["kind"] == "ingress"]
            assert len(ingress) == 1, qd
            blocks.add(ingress[0].get("ingress_block"))
            roots = [q for q in qd if q.get("root")]
            assert [q["kind"] for q in roots] == ["tbf"] and roots[0]["options"]["rate"] == 100e6 / 8, qd
        assert len(blocks) == 1 and None not in blocks, blocks
        filters = [f for f in tc_json("filter", "show", "block", str(blocks.pop())) if "options" in f]
        assert len(filters) == 1 and filters[0]["kind"] == "bpf", filters
    finally:
        sh.close()


def _rtt_matches(chain: Chain, sh: UserspaceShaper) -> None:
    """Every direction of every hop at 2 ms: the RTT grows by 12 ms (max(1 ms, 3 %), as for netem)."""
    sh.set([(p, LinkShape(delay_ms=0.0, rate_mbps=1000.0)) for p in chain.peered], chain.ipr_of)
    _ping(chain, 5)
    loss0, base_ms, _ = _ping(chain, 30)
    sh.set([(p, LinkShape(delay_ms=2.0, rate_mbps=1000.0)) for p in chain.peered], chain.ipr_of)
    loss, rtt_ms, _ = _ping(chain, 30)
    assert loss0 == 0 and loss == 0
    assert abs(rtt_ms - base_ms - 12.0) <= 1.0, (rtt_ms, base_ms)


def test_several_shards_share_the_namespaces(chain):
    _require_root()
    sh = _prepared(chain, shards=3)
    try:
        _rtt_matches(chain, sh)
        assert len(sh.pids) == 3
        st = sh.stats()
        assert st["shards"] == 3 and st["namespaces"] == len(_NODES)
    finally:
        sh.close()


def test_shards_follow_the_namespaces_when_no_count_is_asked(chain):
    """No shard count asked: one shard for the chain's four namespaces, and as many more namespaces
    attached as make NAMESPACES_PER_SHARD per shard start one more per CPU core, no more than the cores."""
    _require_root()
    names = [f"snt-shards-{os.getpid()}-{i}" for i in range(2 * NAMESPACES_PER_SHARD)]
    sh = _prepared(chain)
    try:
        _rtt_matches(chain, sh)
        assert len(sh.pids) == 1
        for n in names:
            subprocess.run(["ip", "netns", "add", n], check=True)
        sh._daemon.attach([f"/run/netns/{n}" for n in names])
        total = len(_NODES) + len(names)
        assert len(sh.pids) == min(os.cpu_count() or 1, math.ceil(total / NAMESPACES_PER_SHARD)), sh.pids
        assert sh.stats()["namespaces"] == total
        _rtt_matches(chain, sh)
    finally:
        sh.close()
        for n in names:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def test_open_file_limit_decides_the_shard_count(chain):
    """Each shard process may hold only (limit - margin) namespace sockets: with room for two per
    process, the four namespaces need two processes even when one is asked for."""
    _require_root()
    limit = FD_MARGIN + 2
    sh = _prepared(chain, shards=1, fd_limit=limit)
    try:
        _rtt_matches(chain, sh)
        pids = sh.pids
        assert len(pids) == 2
        for pid in pids:
            with open(f"/proc/{pid}/limits") as f:
                line = next(x for x in f if x.startswith("Max open files"))
            assert line.split()[3:5] == [str(limit), str(limit)], line
    finally:
        sh.close()


def test_set_delays_changes_delay_and_set_still_sees_the_change(chain):
    """set_delays (the emulator's per-step path for links whose delay alone changes) moves the RTT as set()
    would: 6 directions x 2 ms -> 12 ms more, then x 4 ms -> 24 ms; a port whose rate changed is left to set().
    Then set() back to the first shape (2 ms) must be sent although set() itself last sent 2 ms: the RTT is
    measured back at +12 ms (a shaper comparing with its own stale record would skip it and leave +24 ms)."""
    _require_root()
    sh = _prepared(chain)
    try:
        ports = chain.peered
        sh.set([(p, LinkShape(delay_ms=0.0, rate_mbps=1000.0)) for p in ports], chain.ipr_of)
        _ping(chain, 5)
        loss0, base_ms, _ = _ping(chain, 30)
        two = LinkShape(delay_ms=2.0, rate_mbps=1000.0)
        sh.set([(p, two) for p in ports], chain.ipr_of)
        ids = np.array([sh.fast_id(p) for p in ports])
        assert (ids >= 0).all() and len(set(ids.tolist())) == len(ports)
        n = len(ports)
        rate = np.full(n, 1000.0)
        rate[0] = 500.0  # not what it was shaped with: not done here
        ok = sh.set_delays(ids, np.full(n, 4.0), np.zeros(n), rate, np.full(n, -1))
        assert ok.tolist() == [False] + [True] * (n - 1)
        sh.set([(ports[0], LinkShape(delay_ms=4.0, rate_mbps=1000.0))], chain.ipr_of)
        loss4, rtt4_ms, _ = _ping(chain, 30)
        sh.set([(p, two) for p in ports], chain.ipr_of)
        loss2, rtt2_ms, _ = _ping(chain, 30)
        assert loss0 == loss4 == loss2 == 0
        assert abs(rtt4_ms - base_ms - 24.0) <= 1.0, (rtt4_ms, base_ms)
        assert abs(rtt2_ms - base_ms - 12.0) <= 1.0, (rtt2_ms, base_ms)
        sh.forget(ports[1])
        assert sh.fast_id(ports[1]) == -1
        assert not sh.set_delays(ids[1:2], np.array([3.0]), np.zeros(1), np.array([1000.0]), np.array([-1]))[0]
    finally:
        sh.close()


def test_a_rate_change_does_not_wait_for_the_pools_socket(chain):
    """The step's route sends hold the pool's rtnetlink socket of each namespace they send to (for tens of
    ms at 10^4 satellites); the shaper's tc work in the same namespace uses a socket of its own and does not
    wait for them. Here another thread holds the pool's socket of r1 for 3 s while the shaper changes the
    rate of r1's port: done well within that (it would wait the 3 s on the shared socket)."""
    _require_root()
    from emulator import rtnl

    sh = _prepared(chain)
    port = _peered(chain, "r1-r2")
    pool_handle = rtnl.Rtnl(port.ns_path, port.node)
    try:
        sh.set([(port, LinkShape(delay_ms=1.0, rate_mbps=1000.0))], chain.ipr_of)
        conn = pool_handle._conn
        assert conn is not None
        taken, release = threading.Event(), threading.Event()

        def hold() -> None:
            with conn.lock:
                taken.set()
                release.wait(3.0)
        t = threading.Thread(target=hold)
        t.start()
        try:
            assert taken.wait(5)
            t0 = time.monotonic()
            sh.set([(port, LinkShape(delay_ms=1.0, rate_mbps=200.0))], chain.ipr_of)
            took_s = time.monotonic() - t0
        finally:
            release.set()
            t.join()
        assert took_s < 1.0, took_s
        out = subprocess.run(chain.exec_argv(port.node, "tc", "qdisc", "show", "dev", port.ifname),
                             capture_output=True, text=True, check=True).stdout
        assert "tbf" in out and "200Mbit" in out, out
    finally:
        pool_handle.close()
        sh.close()
