"""Shaping backends on a real chain of namespaces h1 - r1 - r2 - h2, checked with ping and iperf3.

The same tests run on both backends; ``netem`` skips with the kernel's answer when sch_netem is missing
(it runs in the qemu VM harness). Every direction of every hop is shaped (6 ports).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field

import pytest

from emulator.netns import entered, iproute_in
from emulator.shaping import make_shaper, probe_netem
from emulator.shaping.base import LinkShape, Port

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
                    if b"emulator.shaping.delayd" in f.read():
                        pids.add(int(d))
            except OSError:
                pass
    return pids


@dataclass
class Chain:
    names: dict[str, str]  # node -> netns name
    iprs: dict[str, object] = field(default_factory=dict)
    ports: list[Port] = field(default_factory=list)  # the 6 sending ends

    def path(self, node: str) -> str:
        return f"/run/netns/{self.names[node]}"

    def ipr_of(self, node: str):
        return self.iprs[node]

    def exec_argv(self, node: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.names[node], *argv]


@pytest.fixture(scope="module")
def chain():
    _require_root()
    before_ns = _ns_list()
    names = {n: f"{_TAG}-{n}" for n in _NODES}
    ch = Chain(names)
    try:
        for n in _NODES:
            subprocess.run(["ip", "netns", "add", names[n]], check=True)
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
        assert not set(names.values()) & _ns_list(), "namespace left behind"
        assert _ns_list() <= before_ns


@pytest.fixture(params=["userspace", "netem"])
def shaper(request, chain):
    if request.param == "netem":
        ok, detail = probe_netem()
        if not ok:
            pytest.skip(f"kernel has no sch_netem ({detail}); runs in the qemu VM harness")
    daemons_before = _daemon_pids()
    sh, _reason = make_shaper(request.param)
    try:
        for n in _NODES:
            sh.prepare_node(n, chain.path(n), chain.iprs[n])
        yield sh
    finally:
        sh.close()
        assert _daemon_pids() <= daemons_before, "delay daemon left running"


def _shape_all(sh, chain: Chain, shape: LinkShape) -> None:
    sh.set([(p, shape) for p in chain.ports], chain.ipr_of)


def _ping(chain: Chain, count: int, interval_s: float = 0.02, wait_s: int = 2) -> tuple[float, float, str]:
    """Ping h2 from h1; returns (loss %, avg rtt ms or nan, full output)."""
    out = subprocess.run(chain.exec_argv("h1", "ping", "-n", "-c", str(count), "-i", str(interval_s),
                                         "-W", str(wait_s), H2_ADDR),
                         check=False, capture_output=True, text=True,
                         timeout=count * interval_s + wait_s + 10).stdout
    loss = float(re.search(r"([\d.]+)% packet loss", out).group(1))
    m = re.search(r"= [\d.]+/([\d.]+)/", out)
    return loss, float(m.group(1)) if m else float("nan"), out


def test_rtt_equals_sum_of_configured_delays(shaper, chain):
    _shape_all(shaper, chain, LinkShape(delay_ms=0.0, rate_mbps=1000.0))
    _ping(chain, 5)  # ARP and route caches warm
    loss0, base_ms, _ = _ping(chain, 40)
    _shape_all(shaper, chain, LinkShape(delay_ms=5.0, rate_mbps=1000.0))
    loss5, rtt_ms, _ = _ping(chain, 40)
    expected_ms = 6 * 5.0
    assert loss0 == 0 and loss5 == 0
    assert abs((rtt_ms - base_ms) - expected_ms) <= max(1.0, 0.03 * expected_ms), (base_ms, rtt_ms)


def test_delay_changes_in_place_without_loss_or_reordering(shaper, chain):
    _shape_all(shaper, chain, LinkShape(delay_ms=1.0, rate_mbps=1000.0))
    _ping(chain, 3)
    # 10 ms interval, RTT up to 120 ms: a dozen echoes in flight when the delay shrinks from 20 to 2 ms.
    proc = subprocess.Popen(chain.exec_argv("h1", "ping", "-n", "-c", "250", "-i", "0.01", "-W", "2", H2_ADDR),
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
    replies = [(int(s), float(t)) for s, t in re.findall(r"icmp_seq=(\d+) ttl=\d+ time=([\d.]+) ms", out)]
    seqs = [s for s, _ in replies]
    assert "0% packet loss" in out and len(seqs) == 250, out[-400:]
    assert seqs == sorted(seqs) and "DUP" not in out, "replies reordered or duplicated"
    rtts = [t for _, t in replies]
    assert max(rtts) == pytest.approx(120.0, abs=3.0)  # 6 x 20 ms seen while the long delay held
    assert sum(rtts[-20:]) / 20 == pytest.approx(12.0, abs=1.5)  # 6 x 2 ms at the end


def test_loss_100_drops_everything_and_0_restores(shaper, chain):
    _shape_all(shaper, chain, LinkShape(delay_ms=1.0, rate_mbps=1000.0))
    h1_out = next(p for p in chain.ports if p.node == "h1")
    shaper.set([(h1_out, LinkShape(delay_ms=1.0, rate_mbps=1000.0, loss_pct=100.0))], chain.ipr_of)
    loss, _, _ = _ping(chain, 20, wait_s=1)
    assert loss == 100.0
    shaper.set([(h1_out, LinkShape(delay_ms=1.0, rate_mbps=1000.0, loss_pct=0.0))], chain.ipr_of)
    loss, _, _ = _ping(chain, 20)
    assert loss == 0.0


def test_rate_limits_an_iperf3_flow(shaper, chain):
    _shape_all(shaper, chain, LinkShape(delay_ms=1.0, rate_mbps=1000.0))
    r1_to_r2 = next(p for p in chain.ports if p.ifname == "r1-r2")
    shaper.set([(r1_to_r2, LinkShape(delay_ms=1.0, rate_mbps=20.0))], chain.ipr_of)
    port = "5301"
    server = subprocess.Popen(chain.exec_argv("h2", "iperf3", "-s", "-1", "-p", port),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        res = subprocess.run(chain.exec_argv("h1", "iperf3", "-c", H2_ADDR, "-p", port, "-t", "4", "-O", "1",
                                             "-J"), check=True, capture_output=True, text=True, timeout=30)
        mbps = json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        server.kill()
        server.wait()
    assert 0.8 * 20.0 <= mbps <= 1.05 * 20.0, mbps


def test_close_leaves_no_process_and_no_rule(chain):
    _require_root()
    sh, _ = make_shaper("userspace")
    try:
        for n in _NODES:
            sh.prepare_node(n, chain.path(n), chain.iprs[n])
        _shape_all(sh, chain, LinkShape(delay_ms=5.0, rate_mbps=1000.0))
        pid = sh.pid
        assert pid is not None and _ping(chain, 5)[1] > 25.0
    finally:
        sh.close()
    sh.close()  # idempotent
    assert not os.path.exists(f"/proc/{pid}")
    # With the queue rule still in place and nobody bound to the queue, every packet would be dropped;
    # with it gone the path is fast again.
    loss, rtt_ms, _ = _ping(chain, 10)
    assert loss == 0.0 and rtt_ms < 5.0
