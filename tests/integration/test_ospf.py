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
    emu = make_emulation(grid_timeline(), protocol="ospf")
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
