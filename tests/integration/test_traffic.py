"""The traffic programs on a real chain of namespaces h1 - r1 - r2 - h2 (plain veths, no shaping).

Each program is started as the emulator starts it, ``python -m emulator.traffic.<module> ...`` inside a
node's namespace, and its CSV is read back with the package's own parsers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from emulator.kernel.holder import Holder
from emulator.netns import iproute_in
from emulator.network import ROUTER_SYSCTLS, SYSCTLS
from emulator.rtnl import RTM_NEWLINK, Batch, Rtnl, link_conf_body
from emulator.traffic.iperf import IperfFlow, client_argv, parse_iperf_json, parse_iperf_text, server_argv
from emulator.traffic.pathprobe import path_rounds
from emulator.traffic.service import summarise_requests
from emulator.traffic.udpprobe import summarise_udp, udp_samples

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
_TAG = f"t-traffic-{os.getpid()}"
_NODES = ("h1", "r1", "r2", "h2")
_HOPS = (  # (left node, left ifname, left address, right node, right ifname, right address)
    ("h1", "h1-r1", "10.79.1.1", "r1", "r1-h1", "10.79.1.2"),
    ("r1", "r1-r2", "10.79.2.1", "r2", "r2-r1", "10.79.2.2"),
    ("r2", "r2-h2", "10.79.3.1", "h2", "h2-r2", "10.79.3.2"),
)
_ROUTES = {
    "h1": [("0.0.0.0/0", "10.79.1.2")],
    "r1": [("10.79.3.0/24", "10.79.2.2")],
    "r2": [("10.79.1.0/24", "10.79.2.1")],
    "h2": [("0.0.0.0/0", "10.79.3.1")],
}
H2 = "10.79.3.2"


@dataclass
class Chain:
    holder: Holder
    iprs: dict[str, object] = field(default_factory=dict)

    def path(self, node: str) -> str:
        return self.holder.path(node)

    def argv(self, node: str, *argv: str) -> list[str]:
        return ["nsenter", f"--net={self.path(node)}", "--", *argv]

    def py(self, node: str, module: str, *args: str) -> list[str]:
        return self.argv(node, sys.executable, "-m", f"emulator.traffic.{module}", *args)


@pytest.fixture(scope="module")
def chain():
    """The chain's namespaces made as the emulator makes them: by its namespace holder, routers with the
    emulator's router sysctls (:data:`emulator.network.ROUTER_SYSCTLS`), hosts with its host ones; the
    fixture itself writes no sysctl. Forwarding is set per interface through netlink, as in a run."""
    ours = {h[i] for h in _HOPS for i in (1, 4)}
    before_links = set(os.listdir("/sys/class/net")) & ours
    ch = Chain(Holder(_TAG))
    fds: list[int] = []
    try:
        ch.holder.start()
        ch.holder.create(_NODES, [SYSCTLS, ROUTER_SYSCTLS], [int(n.startswith("r")) for n in _NODES])
        for n in _NODES:
            ch.iprs[n] = iproute_in(ch.path(n), n)
        for left, lif, laddr, right, rif, raddr in _HOPS:
            fds.append(os.open(ch.path(right), os.O_RDONLY | os.O_CLOEXEC))
            ch.iprs[left].link("add", ifname=lif, kind="veth", peer={"ifname": rif, "net_ns_fd": fds[-1]})
            for node, ifname, addr in ((left, lif, laddr), (right, rif, raddr)):
                ipr = ch.iprs[node]
                idx = ipr.link_lookup(ifname=ifname)[0]
                batch = Batch()  # forwarding per interface, as the emulator sets it, while still down
                batch.add(RTM_NEWLINK, 0, link_conf_body(idx, node.startswith("r")), f"{node} {ifname} conf")
                rt = Rtnl(ch.path(node), node)
                try:
                    rt.check(batch, "conf")
                finally:
                    rt.close()
                ipr.addr("add", index=idx, address=addr, prefixlen=24)
                ipr.link("set", index=idx, state="up")
        for n in _NODES:
            ipr = ch.iprs[n]
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            for dst, gw in _ROUTES[n]:
                ipr.route("add", dst=dst, gateway=gw)
        yield ch
    finally:
        for fd in fds:
            os.close(fd)
        for ipr in ch.iprs.values():
            ipr.close()
        pid = ch.holder.pid
        ch.holder.close()
    # the holder's namespaces go with it; only our own holder checked (other runs may build theirs meanwhile)
    assert pid is None or not os.path.exists(f"/proc/{pid}"), "namespace holder left behind"
    assert set(os.listdir("/sys/class/net")) & ours <= before_links, "interface left in the root namespace"


@pytest.fixture
def procs():
    """Start processes; every one still running at teardown is killed and reaped, even on failure."""
    started: list[subprocess.Popen] = []

    def start(argv: list[str], **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.Popen(argv, cwd=REPO, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
        if p.stderr is not None:
            p.stderr.close()


def _finish(p: subprocess.Popen, timeout_s: float) -> str:
    """Wait for ``p`` to exit by itself; assert it succeeded; return its stderr."""
    p.wait(timeout=timeout_s)
    err = p.stderr.read().decode(errors="replace") if p.stderr is not None else ""
    assert p.returncode == 0, f"exit {p.returncode}: {err}"
    return err


def _route_r1(ch: Chain) -> None:
    ch.iprs["r1"].route("replace", dst=_ROUTES["r1"][0][0], gateway=_ROUTES["r1"][0][1])


# ---------------------------------------------------------------- udp probe

def test_udp_probe_one_way_delay_near_zero_on_plain_veths(chain, procs, tmp_path):
    recv = procs(chain.py("h2", "udpprobe", "recv", "--bind", H2, "--port", "5601", "--duration", "3",
                          "--out", str(tmp_path / "r.csv")))
    time.sleep(0.5)
    send = procs(chain.py("h1", "udpprobe", "send", "--dst", H2, "--port", "5601", "--rate-pps", "200",
                          "--size", "200", "--duration", "1.5", "--flow", "3", "--out", str(tmp_path / "s.csv")))
    _finish(send, 10)
    _finish(recv, 10)
    d = summarise_udp(str(tmp_path / "s.csv"), str(tmp_path / "r.csv"))
    assert 280 <= d["sent"] <= 300, d["sent"]  # fixed schedule: 1.5 s x 200 pps
    assert d["lost"] == 0 and d["reordered"] == 0 and d["duplicates"] == 0
    assert 0 <= d["min_ms"] and d["p50_ms"] < 1.0, d


def test_udp_probe_sees_loss_while_a_link_is_down(chain, procs, tmp_path):
    recv = procs(chain.py("h2", "udpprobe", "recv", "--bind", H2, "--port", "5602", "--duration", "5",
                          "--out", str(tmp_path / "r.csv")))
    time.sleep(0.5)
    send = procs(chain.py("h1", "udpprobe", "send", "--dst", H2, "--port", "5602", "--rate-pps", "100",
                          "--duration", "3", "--out", str(tmp_path / "s.csv")))
    r1 = chain.iprs["r1"]
    idx = r1.link_lookup(ifname="r1-r2")[0]
    try:
        time.sleep(1.0)
        t_down = time.time()
        r1.link("set", index=idx, state="down")
        time.sleep(1.0)
        t_up = time.time()
    finally:
        r1.link("set", index=idx, state="up")
        _route_r1(chain)  # an interface set down loses its routes
    _finish(send, 10)
    _finish(recv, 10)
    d = summarise_udp(str(tmp_path / "s.csv"), str(tmp_path / "r.csv"))
    assert 20 <= d["loss_pct"] <= 50, d  # ~1 s of 3 s dark
    smp = udp_samples(str(tmp_path / "s.csv"), str(tmp_path / "r.csv"))
    lost_t = smp.sent_unix_s[(smp.one_way_ms != smp.one_way_ms)]
    assert lost_t.min() >= t_down - 0.05 and lost_t.max() <= t_up + 0.3, (lost_t.min(), lost_t.max())
    # packets flow again after the link is back
    assert (smp.sent_unix_s[smp.one_way_ms == smp.one_way_ms] > t_up + 0.3).sum() > 50


# ---------------------------------------------------------------- iperf3

@pytest.mark.parametrize("udp", [False, True], ids=["tcp", "udp"])
def test_iperf3_throughput_parses(chain, procs, tmp_path, udp):
    flow = IperfFlow(H2, 5611 + udp, 2.0, udp=udp, rate_mbps=50 if udp else None)
    server = procs(chain.argv("h2", *server_argv(flow, str(tmp_path / "s.txt"), idle_timeout_s=15)))
    time.sleep(0.5)
    client = procs(chain.argv("h1", *client_argv(flow, str(tmp_path / "c.json"))))
    _finish(client, 20)
    _finish(server, 20)
    c = parse_iperf_json((tmp_path / "c.json").read_text())
    assert c["complete"], c["error"]
    assert c["protocol"] == ("UDP" if udp else "TCP")
    assert c["sent_mbps"] > 0 and c["received_mbps"] > 0 and len(c["intervals"]) == 2
    if udp:
        assert 40 < c["received_mbps"] < 60 and c["lost_pct"] < 5
    else:
        assert c["retransmits"] is not None
    s = parse_iperf_text((tmp_path / "s.txt").read_text())
    assert s["complete"] and s["received_mbps"] > 0 and len(s["intervals"]) >= 2
    assert all(iv["t_unix_s"] > 1e9 for iv in s["intervals"])


# ---------------------------------------------------------------- path probe

def test_pathprobe_records_router_hops_in_order(chain, procs, tmp_path):
    out = tmp_path / "p.csv"
    p = procs(chain.py("h1", "pathprobe", "--dst", H2, "--max-ttl", "8", "--interval-s", "0.3",
                       "--duration", "1.5", "--out", str(out)))
    _finish(p, 15)
    rounds = path_rounds(str(out))
    assert len(rounds) >= 4
    for r in rounds:
        # r1 and r2 answer from the interface the probe came in by; then the destination
        assert r.hops == ["10.79.1.2", "10.79.2.2", H2] and r.reached, r
        assert all(0 < x < 50 for x in r.rtt_ms)


def test_pathprobe_sees_route_change(chain, procs, tmp_path):
    """While r1 has no route to h2 the rounds stop at r1 and do not reach h2; then the path is back.

    r1 answers such probes with ICMP unreachable, which Linux rate-limits per source outside
    ``icmp_ratelimit`` (``net.ipv4.route.error_cost``/``error_burst``, host-wide, left alone), so the
    outage's rounds may show no answer at all rather than r1's.
    """
    out = tmp_path / "p.csv"
    p = procs(chain.py("h1", "pathprobe", "--dst", H2, "--max-ttl", "8", "--interval-s", "0.25",
                       "--duration", "3", "--out", str(out)))
    try:
        time.sleep(0.8)
        t_cut = time.time()
        chain.iprs["r1"].route("replace", dst=_ROUTES["r1"][0][0], type="unreachable")
        time.sleep(1.2)
        t_back = time.time()
    finally:
        _route_r1(chain)
    _finish(p, 15)
    rounds = path_rounds(str(out))
    full = ["10.79.1.2", "10.79.2.2", H2]
    assert rounds[0].hops == full and rounds[-1].hops == full
    during = [r for r in rounds if t_cut + 0.05 < r.t_unix_s < t_back - 0.3]
    assert len(during) >= 2
    for r in during:
        assert not r.reached and set(r.hops) <= {"10.79.1.2", None}, r


# ---------------------------------------------------------------- compute service

def test_service_records_total_network_and_service_latency(chain, procs, tmp_path):
    server = procs(chain.py("h2", "service", "serve", "--bind", H2, "--port", "8621", "--work-ms", "20",
                            "--name", "sat-9", "--duration", "4", "--out", str(tmp_path / "served.csv")))
    time.sleep(0.7)
    client = procs(chain.py("h1", "service", "request", "--targets", f"sat-9={H2}:8621,ghost=10.79.3.99:8621",
                            "--policy", "round-robin", "--rate-pps", "4", "--duration", "2", "--timeout-s", "0.3",
                            "--out", str(tmp_path / "req.csv")))
    _finish(client, 15)
    _finish(server, 15)
    d = summarise_requests(str(tmp_path / "req.csv"))
    good, ghost = d["per_target"]["sat-9"], d["per_target"]["ghost"]
    assert good["count"] >= 3 and good["failures"] == 0
    assert 19 <= good["service_ms"]["p50"] <= 60, good  # 20 ms of CPU each; wall time >= that
    assert 0 < good["network_ms"]["p50"] < 20
    assert good["total_ms"]["p50"] == pytest.approx(good["service_ms"]["p50"] + good["network_ms"]["p50"],
                                                    abs=5)
    # nobody at 10.79.3.99: timeouts recorded as failures, the client carries on
    assert ghost["count"] >= 3 and ghost["ok"] == 0 and set(ghost["statuses"]) <= {"timeout", "unreachable"}


def test_service_nearest_follows_schedule(chain, procs, tmp_path):
    import json

    server = procs(chain.py("h2", "service", "serve", "--bind", H2, "--port", "8622", "--work-ms", "1",
                            "--duration", "4"))
    server2 = procs(chain.py("r2", "service", "serve", "--bind", "10.79.3.1", "--port", "8622", "--work-ms", "1",
                             "--duration", "4"))
    t0 = time.time()
    sched = tmp_path / "nearest.json"
    sched.write_text(json.dumps([{"t_unix_s": t0, "target": "far"}, {"t_unix_s": t0 + 1.7, "target": "near"}]))
    time.sleep(0.7)
    client = procs(chain.py("h1", "service", "request", "--targets", f"far={H2}:8622,near=10.79.3.1:8622",
                            "--policy", "nearest", "--schedule", str(sched), "--rate-pps", "5", "--duration", "2",
                            "--out", str(tmp_path / "req.csv")))
    _finish(client, 15)
    _finish(server, 15)
    _finish(server2, 15)
    import csv

    with open(tmp_path / "req.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["ok"] == "1" for r in rows)
    assert all(r["target"] == ("far" if float(r["t_send_unix_s"]) < t0 + 1.7 else "near") for r in rows)
    assert {r["target"] for r in rows} == {"far", "near"}


# ---------------------------------------------------------------- interruption

def _programs(ch: Chain, tmp: Path) -> dict[str, tuple[list[list[str]], Path]]:
    """name -> (argvs to start, the last one being the program interrupted; its CSV)."""
    return {
        "udp-send": ([ch.py("h2", "udpprobe", "recv", "--bind", H2, "--port", "5631", "--duration", "6",
                            "--out", str(tmp / "r.csv")),
                      ch.py("h1", "udpprobe", "send", "--dst", H2, "--port", "5631", "--rate-pps", "50",
                            "--duration", "30", "--out", str(tmp / "s.csv"))], tmp / "s.csv"),
        "udp-recv": ([ch.py("h1", "udpprobe", "send", "--dst", H2, "--port", "5632", "--rate-pps", "50",
                            "--duration", "4", "--out", str(tmp / "s.csv")),
                      ch.py("h2", "udpprobe", "recv", "--bind", H2, "--port", "5632", "--duration", "30",
                            "--out", str(tmp / "r.csv"))], tmp / "r.csv"),
        "path": ([ch.py("h1", "pathprobe", "--dst", H2, "--interval-s", "0.2", "--duration", "30",
                        "--out", str(tmp / "p.csv"))], tmp / "p.csv"),
        "request": ([ch.py("h2", "service", "serve", "--bind", H2, "--port", "8632", "--work-ms", "2",
                           "--duration", "6"),
                     ch.py("h1", "service", "request", "--targets", f"a={H2}:8632", "--rate-pps", "10",
                           "--duration", "30", "--out", str(tmp / "q.csv"))], tmp / "q.csv"),
    }


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
@pytest.mark.parametrize("name", ["udp-send", "udp-recv", "path", "request"])
def test_interrupted_run_leaves_readable_csv(chain, procs, tmp_path, name, sig):
    argvs, out = _programs(chain, tmp_path)[name]
    started = []
    for argv in argvs[:-1]:
        started.append(procs(argv))
        time.sleep(0.5)
    p = procs(argvs[-1])
    time.sleep(2.2)
    p.send_signal(sig)
    t = time.monotonic()
    p.wait(timeout=5)
    if sig == signal.SIGINT:
        assert p.returncode == 0 and time.monotonic() - t < 2, "did not stop cleanly and promptly on SIGINT"
        assert out.read_text().endswith("\n")
    text = out.read_text()
    lines = text.splitlines()
    assert lines and "," in lines[0]
    # flushed at least once a second: a run of ~2 s has records on disk even after SIGKILL
    if name == "udp-send":
        d = summarise_udp(str(out), str(tmp_path / "r.csv"))
        assert d["sent"] >= 50
    elif name == "udp-recv":
        assert len(lines) - 1 >= 50
    elif name == "path":
        assert len(path_rounds(str(out))) >= 4
    else:
        assert summarise_requests(str(out))["ok"] >= 10
    for q in started:
        q.send_signal(signal.SIGTERM)
        q.wait(timeout=5)
        assert q.returncode == 0
