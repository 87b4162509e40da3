"""OSPF in real BIRD daemons against what a user would check: it converges to shortest-delay routes,
reroutes around a cut ISL, follows handovers and cost changes, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from handmade import GSL_B, grid_timeline

import routing.ospf  # noqa: F401  (registers "ospf")
from emulator.addressing import ip_str
from routing.graph import build_graph, next_hops
from topologies.timeline import LINK_CLASSES, Reason

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]
_ISL = LINK_CLASSES.index("isl")
CONVERGE_S = 60.0


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kernel_routes(emu, node: str) -> dict[str, str]:
    """{destination prefix: output interface} of the routes BIRD installed in ``node``."""
    out = emu.node(node).cmd("ip -j route show proto bird")
    routes = {}
    for r in json.loads(out or "[]"):
        dst = r["dst"] if "/" in r["dst"] else r["dst"] + "/32"
        routes[dst] = r.get("dev", "")
    return routes


def prefixes(emu) -> dict[int, str]:
    a = emu.addr
    return {i: f"{ip_str(a.prefix[i])}/{int(a.prefix_len[i])}" for i in range(emu.n_nodes)}


def attached_router(emu, host: int) -> int:
    l = int(emu.addr.access_link[host])
    return int(emu.timeline.snapshot(0).peer[l])


def wanted(emu, router: int) -> set[str]:
    """Prefixes router ``router`` must have an OSPF route to: other routers' loopbacks, hosts not on it."""
    pf = prefixes(emu)
    out = set()
    for i in range(emu.n_nodes):
        if i == router:
            continue
        if emu.is_router[i] or attached_router(emu, i) != router:
            out.add(pf[i])
    return out


def all_tables(emu) -> dict[str, dict[str, str]]:
    return {emu.names[r]: kernel_routes(emu, emu.names[r]) for r in np.flatnonzero(emu.is_router).tolist()}


def wait_converged(emu, timeout_s: float = CONVERGE_S) -> float:
    """Seconds until every router has a route to every destination; fails after ``timeout_s``."""
    t0 = time.monotonic()
    routers = np.flatnonzero(emu.is_router).tolist()
    need = {r: wanted(emu, r) for r in routers}
    while True:
        missing = [emu.names[r] for r in routers if not need[r] <= set(kernel_routes(emu, emu.names[r]))]
        if not missing:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout_s, f"OSPF did not converge in {timeout_s} s: {missing}"
        time.sleep(0.2)


def follow(emu, tables, src: int, dst: int) -> tuple[list[int], float]:
    """Links and one-way delay (ms) of the path the kernels forward on from router ``src`` to ``dst``."""
    a, snap = emu.ends, emu.applied  # the veth pair that carries each slot now
    far = np.where(snap.peer >= 0, snap.peer, emu.link_a)
    by_end = {}
    for l in range(emu.timeline.n_links):
        by_end[(int(emu.link_a[l]), a.ifname_a[l])] = (l, int(far[l]))
        by_end[(int(far[l]), a.ifname_b[l])] = (l, int(emu.link_a[l]))
    target = prefixes(emu)[dst]
    v, links, delay = src, [], 0.0
    last = dst if emu.is_router[dst] else attached_router(emu, dst)
    while v != last:
        assert len(links) < emu.n_nodes, f"routing loop from {emu.names[src]} to {emu.names[dst]}"
        dev = tables[emu.names[v]].get(target)
        assert dev, f"{emu.names[v]} has no route to {target}"
        l, v = by_end[(v, dev)]
        links.append(l)
        delay += float(snap.params[l, 0])
    return links, delay


def assert_shortest_delay(emu) -> None:
    """Every router forwards to every destination on a path of least delay (up to cost rounding)."""
    tables = all_tables(emu)
    routers = np.flatnonzero(emu.is_router)
    dests = np.arange(emu.n_nodes)
    graph = build_graph(emu.link_a, emu.applied, emu.n_nodes)
    dist, _, _ = next_hops(graph, dests)
    for r in routers.tolist():
        for k, d in enumerate(dests.tolist()):
            if d == r or (not emu.is_router[d] and attached_router(emu, d) == r):
                continue
            links, delay = follow(emu, tables, r, d)
            if not emu.is_router[d]:
                best = dist[k, r] - float(emu.applied.params[int(emu.addr.access_link[d]), 0])
            else:
                best = dist[k, r]
            # graph weights add a tiny per-hop tie-breaker; costs round delays to 10 us per link
            assert delay <= best + 0.01 * (len(links) + 1), (emu.names[r], emu.names[d], delay, best)


def wait_shortest_delay(emu, timeout_s: float = CONVERGE_S) -> None:
    """Until every router forwards on a least-delay path (:func:`assert_shortest_delay`); its failure
    after ``timeout_s``. Every destination having *a* route is not enough: after a handover or a cost
    change the old routes stay until the new LSAs (held back by MinLSInterval) have been flooded."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            assert_shortest_delay(emu)
            return
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.5)


def ping_ok(emu, src: str, dst_addr: str) -> bool:
    out = emu.node(src).cmd(f"ping -n -c 1 -W 1 {dst_addr}")
    return " 1 received" in out


def test_ospf_converges_to_shortest_delay_routes_and_hosts_ping(make_emulation):
    emu = make_emulation(grid_timeline(), protocol="ospf")
    assert emu.routes is None  # no static routes: the daemons find them
    t_s = wait_converged(emu)
    print(f"\nOSPF converged {t_s:.1f} s after build() returned (18 routers)")
    assert ping_ok(emu, "h-a", emu.address_of("h-b"))
    assert ping_ok(emu, "c-1", emu.address_of("h-a"))
    assert ping_ok(emu, "h-b", emu.address_of("sat-3-3"))  # a router answers on its loopback
    wait_shortest_delay(emu)
    out = emu.protocol.daemons.command("sat-0-0", "show ospf neighbors")
    assert len(re.findall(r"Full/PtP", out)) == 5, out  # four ISLs and gw-a's antenna


def _parse_ping(text: str) -> list[float]:
    """Reception times (unix s) of the replies in ``ping -D`` output."""
    return [float(m) for m in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", text, re.MULTILINE)]


def test_cut_isl_on_active_path_reroutes(make_emulation):
    tl = grid_timeline()
    # step 1 := step 0, then one ISL of the live h-a -> h-b path is cut there
    for arr in (tl.state, tl.peer, tl.delay_ms, tl.rate_mbps, tl.loss_pct):
        arr[:, 1] = arr[:, 0]
    emu = make_emulation(tl, protocol="ospf")
    wait_converged(emu)
    _ia, ib, gw = tl.node_index("h-a"), tl.node_index("h-b"), tl.node_index("gw-a")
    links, _ = follow(emu, all_tables(emu), gw, ib)
    isls = [l for l in links if tl.link_class[l] == _ISL]
    assert len(isls) >= 2
    cut = isls[1]
    tl.state[cut, 1] = Reason.OUTAGE
    time.sleep(6)  # let MinLSInterval (5 s) pass since the last LSA of convergence
    dst = emu.address_of("h-b")
    pinger = emu.node("h-a").popen(["ping", "-D", "-n", "-i", "0.01", "-W", "1", dst], text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        time.sleep(1.0)
        t_cut = time.time()
        emu.apply_step(1)
        tables_at: list[tuple[float, dict]] = [(time.time(), all_tables(emu))]
        # poll every router's table until it has not changed for 5 s
        while time.time() - tables_at[-1][0] < 5 and time.time() - t_cut < 40:
            time.sleep(0.1)
            t = all_tables(emu)
            if t != tables_at[-1][1]:
                tables_at.append((time.time(), t))
        time.sleep(0.5)
    finally:
        pinger.send_signal(signal.SIGINT)
        out, _ = pinger.communicate(timeout=10)
    replies = np.array(_parse_ping(out))
    assert len(replies) and replies[0] < t_cut, out[-500:]
    after = replies[replies > t_cut]
    assert len(after), "no reply after the cut: traffic did not resume"
    gaps = np.diff(np.concatenate([[t_cut], after]))
    k = int(np.argmax(gaps))
    resume_s = float(after[k] - t_cut) if gaps[k] > 0.05 else 0.0
    stable_s = tables_at[-1][0] - t_cut
    print(f"\ncut ISL slot {cut}: first reply on the new path {resume_s:.2f} s after the cut; "
          f"router tables stable {stable_s:.2f} s after it ({len(tables_at) - 1} changes seen); "
          f"{len(replies)} replies")
    assert resume_s < 15.0
    new_links, _ = follow(emu, all_tables(emu), gw, ib)
    assert cut not in new_links
    assert_shortest_delay(emu)
    assert ping_ok(emu, "h-a", dst)


def test_handover_and_cost_changes_reach_the_daemons(make_emulation):
    # every router may be reconfigured at every step (by default each has a slot once per 10 s)
    emu = make_emulation(grid_timeline(), protocol=routing.ospf.Ospf(cost_push_interval_s=0.0))
    wait_converged(emu)
    d = emu.protocol.daemons
    g, spare = f"g{GSL_B}", f"g{GSL_B}b"
    assert f'"{g}"' in d.conf_path("sat-2-2").read_text()
    emu.apply_step(1)  # gw-b's antenna hands over from sat-2-2 to sat-2-3 (its second veth pair); one ISL in outage
    assert f'"{spare}"' in d.conf_path("sat-2-3").read_text() and g not in d.conf_path("sat-2-2").read_text()
    assert '"ant0b"' in d.conf_path("gw-b").read_text() and '"ant0"' not in d.conf_path("gw-b").read_text()
    deadline = time.monotonic() + CONVERGE_S
    while "Full/PtP" not in d.command("sat-2-3", f'show ospf neighbors "{spare}"'):
        assert time.monotonic() < deadline, "no adjacency on the antenna's new pair"
        time.sleep(0.2)
    wait_converged(emu)
    wait_shortest_delay(emu)
    assert ping_ok(emu, "h-a", emu.address_of("h-b"))
    # step 4: every delay is 0 ms, so every cost becomes 1, pushed without restarting adjacencies
    before = d.pids
    emu.apply_step(4)
    d.wait_idle()  # the daemons are asked in the background
    out = d.command("sat-0-0", 'show ospf interface "fore"')
    assert re.search(r"Cost: 1\b", out), out
    assert d.pids == before and all(alive(p) for p in before.values())


def test_stop_leaves_no_daemon_socket_or_folder_and_keeps_logs(make_emulation, tmp_path):
    from emulator.clean import find_ours

    emu = make_emulation(grid_timeline(), protocol="ospf", log_dir=tmp_path / "logs")
    wait_converged(emu)
    d = emu.protocol.daemons
    pids = list(d.pids.values())
    folder = d.dir
    assert len(pids) == 18 and folder.is_dir() and all(alive(p) for p in pids)
    assert (folder / "sat-0-0.ctl").exists()
    emu.stop()
    assert not [p for p in pids if alive(p)]
    assert not folder.exists() and not folder.parent.exists()
    assert find_ours(emu.run_id) == (set(), set())
    log_text = (tmp_path / "logs" / "sat-0-0.log").read_text()
    assert "Started" in log_text  # the daemon's log survives the run, in the folder asked for


def test_clean_removes_daemons_and_folder_after_kill_9():
    from emulator.clean import clean, find_ours

    run_id = f"ospf9-{os.getpid()}"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO / 'tests')!r})
        sys.path.insert(0, {str(REPO / 'tests' / 'integration')!r})
        from handmade import grid_timeline
        from conftest import NullShaper
        import routing.ospf
        from emulator.network import Emulation
        emu = Emulation(grid_timeline(), NullShaper(), "ospf", run_id={run_id!r})
        emu.build()
        print("READY", *emu.protocol.daemons.pids.values(), flush=True)
        time.sleep(300)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=REPO, text=True)
    try:
        line = proc.stdout.readline().split()
        assert line and line[0] == "READY", line
        bird_pids = [int(p) for p in line[1:]]
        assert len(bird_pids) == 18
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert any(alive(p) for p in bird_pids)  # the daemons outlive a killed emulator ...
        report = clean(run_id)
        assert report.ok
        assert not [p for p in bird_pids if alive(p)]  # ... until clean
        assert not Path(f"/run/satnetem/{run_id}").exists()
        assert find_ours(run_id) == (set(), set())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        clean(run_id)


# ------------------------------------------------------------------------------------- through the shaper
#: Captures OSPF hellos for DURATION s in a node's namespace and prints one "<unix s> <src ip>" line each.
#: "send": on the wire as they leave IFNAME (AF_PACKET, the kernel's egress time stamp); "recv": as a
#: raw OSPF socket gets them (after the receiving end's hold), time of the read.
_HELLO_CAPTURE = textwrap.dedent("""
    import socket, struct, sys, time
    mode, ifname, duration = sys.argv[1], sys.argv[2], float(sys.argv[3])
    if mode == "send":
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL: egress taps see only these
        s.bind((ifname, 0))
        s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS
        off = 14
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 89)
        s.setsockopt(socket.SOL_SOCKET, 25, ifname.encode())  # SO_BINDTODEVICE
        off = 0
    s.settimeout(0.2)
    print("READY", flush=True)
    end = time.time() + duration
    while time.time() < end:
        try:
            data, anc, _, addr = s.recvmsg(65535, 64)
        except socket.timeout:
            continue
        t = time.time()
        if mode == "send":
            if addr[2] != socket.PACKET_OUTGOING:
                continue
            for level, kind, val in anc:
                if level == socket.SOL_SOCKET and kind == 35:
                    sec, ns = struct.unpack("ll", val[:16])
                    t = sec + ns * 1e-9
        ip = data[off:]
        if len(ip) > 22 and ip[9] == 89 and ip[21] == 1:  # IP protocol OSPF, OSPF packet type 1 (hello)
            print(f"{t:.6f} {socket.inet_ntoa(ip[12:16])}", flush=True)
""")


def _capture(emu, node: str, mode: str, ifname: str, duration_s: float):
    proc = emu.node(node).popen([sys.executable, "-c", _HELLO_CAPTURE, mode, ifname, str(duration_s)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
    return proc


def _nx_delay_ms(emu, src: int, dst: int) -> float:
    """Least one-way delay between nodes ``src`` and ``dst`` over the applied snapshot's up links,
    computed with networkx (not the product's scipy graph)."""
    import networkx as nx

    snap = emu.applied
    g = nx.Graph()
    for l in np.flatnonzero(snap.up & (snap.peer >= 0)).tolist():
        a, b, d = int(emu.link_a[l]), int(snap.peer[l]), float(snap.params[l, 0])
        if not g.has_edge(a, b) or g[a][b]["delay"] > d:
            g.add_edge(a, b, delay=d)
    return float(nx.shortest_path_length(g, src, dst, weight="delay"))


def assert_least_delay_nx(emu) -> None:
    """Every router forwards to every destination on a path whose delay is the networkx least delay
    (up to OSPF's cost rounding: 10 us per link)."""
    tables = all_tables(emu)
    for r in np.flatnonzero(emu.is_router).tolist():
        for d in range(emu.n_nodes):
            if d == r or (not emu.is_router[d] and attached_router(emu, d) == r):
                continue
            links, delay = follow(emu, tables, r, d)
            last = d if emu.is_router[d] else attached_router(emu, d)
            best = _nx_delay_ms(emu, r, last)
            assert delay <= best + 0.01 * (len(links) + 1), (emu.names[r], emu.names[d], delay, best)


def test_ospf_through_the_userspace_shaper(make_emulation):
    """BIRD's own packets are held like data: hellos cross a 2 ms ISL in 2 ms; OSPF converges to the
    networkx least-delay routes over shaped links, and the hosts' ping RTT is the predicted one."""
    from emulator import shaping

    tl = grid_timeline()
    # costs pushed at the step they change (step 4 below), not at each router's slot
    emu = make_emulation(tl, shaping.make_shaper("userspace")[0], protocol=routing.ospf.Ospf(cost_push_interval_s=0.0))
    t_s = wait_converged(emu)
    deadline = time.monotonic() + CONVERGE_S
    while True:
        try:
            assert_least_delay_nx(emu)
            break
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)
    print(f"\nOSPF through the userspace shaper: every route {t_s:.1f} s after build(); "
          f"least-delay forwarding {time.monotonic() - deadline + CONVERGE_S + t_s:.1f} s after it")

    # hellos of sat-0-0 on its 'fore' ISL (slot 0, 2.0 ms) leave at once and reach sat-0-1 2 ms later
    isl = 0
    assert emu.names[int(emu.link_a[isl])] == "sat-0-0" and emu.ends.ifname_a[isl] == "fore"
    far, far_if = emu.names[int(emu.applied.peer[isl])], emu.ends.ifname_b[isl]
    src_ip = ip_str(emu.ends.addr_a[isl])
    rx = _capture(emu, far, "recv", far_if, 4.5)
    tx = _capture(emu, "sat-0-0", "send", "fore", 4.0)
    sent = [float(line.split()[0]) for line in tx.communicate(timeout=30)[0].splitlines()
            if line.split()[1:] == [src_ip]]
    got = [float(line.split()[0]) for line in rx.communicate(timeout=30)[0].splitlines()
           if line.split()[1:] == [src_ip]]
    held = [min((r for r in got if r > t), default=np.inf) - t for t in sent]
    want_ms = float(emu.applied.params[isl, 0])
    print(f"hellos {src_ip} -> {far}: held {np.round(np.array(held) * 1e3, 3).tolist()} ms (link {want_ms} ms)")
    assert len(sent) >= 3 and all(h < 0.5 for h in held), (sent, got)
    # never early (held at least the link's delay), and at least one on time: the reader's wake-up on a
    # busy machine adds to single samples, never takes away from them
    assert want_ms - 0.1 <= min(held) * 1e3 <= want_ms + 1.0, held

    # the hosts' RTT: twice the networkx least delay between them (the links are symmetric), over the
    # emulator's own overhead, as in test_network: the RTT on a path as long with every delay 0 (step 4;
    # every OSPF cost is then 1 and the least-delay path of step 0 is also a least-hop one)
    ia, ib, gw = tl.node_index("h-a"), tl.node_index("h-b"), tl.node_index("gw-a")
    predicted = 2 * _nx_delay_ms(emu, ia, ib)
    hops = len(follow(emu, all_tables(emu), gw, ib)[0])
    measured = _median_rtt(emu, "h-a", "h-b")
    emu.apply_step(4)
    emu.protocol.daemons.wait_idle()
    deadline = time.monotonic() + CONVERGE_S
    while _hops(emu, gw, ib) != hops or not ping_ok(emu, "h-a", emu.address_of("h-b")):
        assert time.monotonic() < deadline, "no least-hop path with every delay 0"
        time.sleep(0.5)
    base = _median_rtt(emu, "h-a", "h-b")
    err = measured - base - predicted
    print(f"h-a -> h-b RTT median {measured:.3f} ms, predicted {predicted:.3f} ms, zero-delay RTT {base:.3f} ms "
          f"over as many links ({hops + 2} each way)")
    assert abs(err) <= max(1.0, 0.03 * predicted), (measured, base, predicted)


def _median_rtt(emu, src: str, dst: str) -> float:
    out = emu.node(src).cmd(f"ping -n -c 20 -i 0.05 -W 1 {emu.address_of(dst)}")
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
    assert len(rtts) >= 19, out
    return float(np.median(rtts))


def _hops(emu, src: int, dst: int) -> int | None:
    """Links on the forwarding path from router ``src`` to ``dst`` now; None while it has a gap or loop."""
    try:
        return len(follow(emu, all_tables(emu), src, dst)[0])
    except AssertionError:
        return None
