"""The centralised routing protocols in a live emulation: pings end to end with each, kernel multipath
routes for ecmp, make-before-break handovers with predictive, and a plugin package installed with pip."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from handmade import GSL_B, N_PER_PLANE, N_PLANES, OUTAGE_ISL, grid_isls, grid_timeline, sat_index, sat_name

from routing.paths import table_path
from topologies.timeline import LINK_CLASSES, LINK_ROLES, Node, Reason, Timeline

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]
CENTRAL = ("shortest-delay", "min-hop", "ecmp", "predictive")


def ping(emu, src: str, dst_addr: str, count: int = 3, interval_s: float = 0.1) -> int:
    """Replies received for ``count`` pings from node ``src``."""
    out = emu.node(src).cmd(f"ping -n -q -c {count} -i {interval_s} -W 1 {dst_addr}")
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    return int(m.group(2)) if m else 0


def prefix_of(emu, node: str) -> str:
    """The prefix of the route that reaches ``node``: its router's site block for a host behind a router
    (emulator/addressing.py: one route reaches a router and its hosts), a router's own block if it has
    hosts, else its own prefix."""
    from emulator.addressing import ip_str

    a = emu.addr
    i = emu.timeline.node_index(node)
    site = i if a.is_router[i] else int(a.site_router[i])
    if site >= 0 and a.site_len[site]:
        return f"{ip_str(a.site_prefix[site])}/{int(a.site_len[site])}"
    return f"{ip_str(a.prefix[i])}/{int(a.prefix_len[i])}"


def kernel_gateways(emu, router: str, prefix: str) -> list[str]:
    """Gateways of the kernel's route to ``prefix`` in ``router`` (one per next hop), sorted."""
    out = emu.node(router).cmd(f"ip -4 route show exact {prefix}")
    return sorted(re.findall(r"via (\S+)", out))


def table_gateways(emu, router: str, dest: str) -> list[str]:
    """Gateways the protocol's current table wants at ``router`` towards ``dest``, sorted."""
    from emulator.addressing import ip_str

    r, d = emu.timeline.node_index(router), emu.timeline.node_index(dest)
    hops = emu.routes.multipath_of(r).get(d, [])
    if [v for v, _ in hops] == [d]:  # a host on this router's own subnet: the connected route serves it
        return []
    e = emu.ends  # the veth pair that carries each slot now
    return sorted(ip_str(e.addr_b[l] if int(emu.link_a[l]) == r else e.addr_a[l]) for _, l in hops)


# ------------------------------------------------------------------------------------- every protocol
@pytest.mark.parametrize("protocol", CENTRAL)
def test_each_protocol_carries_pings_end_to_end(make_emulation, protocol):
    tl = grid_timeline()
    emu = make_emulation(tl, protocol=protocol)
    assert emu.protocol.name == protocol
    dst = emu.address_of("h-b")
    routers = [n.name for n in tl.nodes if n.kind in ("sat", "gateway") and n.name != "gw-b"]
    for step in (0, 1, 3):  # all up; handover + ISL outage; gw-a back on another satellite
        if step:
            emu.apply_step(step)
        assert ping(emu, "h-a", dst) == 3, (protocol, step)
        assert ping(emu, "c-1", dst) == 3, (protocol, step)
        # what the kernel forwards on is what the protocol computed, at every router
        for r in routers:
            assert kernel_gateways(emu, r, prefix_of(emu, "h-b")) == table_gateways(emu, r, "h-b"), (r, step)


# ------------------------------------------------------------------------------------- ecmp
def test_ecmp_installs_multipath_routes_where_equal_paths_exist(make_emulation):
    tl = grid_timeline()
    emu = make_emulation(tl, protocol="ecmp")
    routers = [n.name for n in tl.nodes if n.kind == "sat"] + ["gw-a"]
    dests = ("h-b", "h-a", "c-1")
    multi = [(r, d) for r in routers for d in dests if len(table_gateways(emu, r, d)) > 1]
    assert len(multi) >= 10  # the 4x4 torus has many equal-hop paths
    for r, d in multi:
        out = emu.node(r).cmd(f"ip -4 route show exact {prefix_of(emu, d)}")
        assert out.count("nexthop via") == len(table_gateways(emu, r, d)), out
    # flows are hashed on the 5-tuple inside the router namespaces; the host's own setting is untouched
    assert emu.node("sat-0-0").cmd("cat /proc/sys/net/ipv4/fib_multipath_hash_policy").strip() == "1"
    assert Path("/proc/sys/net/ipv4/fib_multipath_hash_policy").read_text().strip() == "0"
    # a step that takes an ISL down and moves an antenna: the kernel follows the table, nothing uses
    # the dead ISL, and traffic still flows; then back to step 0
    for step in (1, 0):
        emu.apply_step(step)
        for r in routers:
            for d in dests:
                assert kernel_gateways(emu, r, prefix_of(emu, d)) == table_gateways(emu, r, d), (r, d, step)
        assert ping(emu, "h-a", emu.address_of("h-b")) == 3
        assert ping(emu, "c-1", emu.address_of("h-a")) == 3
    emu.apply_step(1)
    assert "dev fore" not in emu.node("sat-1-0").cmd("ip -4 route show")
    assert not (emu.routes.mp_link == OUTAGE_ISL).any()


def test_ecmp_spreads_flows_over_its_next_hops(make_emulation):
    """UDP flows that differ only in their source port leave a multipath router on more than one
    interface (the kernel hashes on the 5-tuple)."""
    tl = grid_timeline()
    emu = make_emulation(tl, protocol="ecmp")
    ib = tl.node_index("h-b")
    row = list(emu.routes.destinations).index(ib)
    width = (emu.routes.mp_next_hop[row] >= 0).sum(axis=1)
    fork = next(v for v in range(len(tl.nodes)) if tl.nodes[v].kind == "sat" and width[v] > 1)
    node = emu.node(tl.nodes[fork].name)
    dst = emu.address_of("h-b")
    out_ifs = set()
    for sport in range(1000, 1032):
        out = node.cmd(f"ip -4 route get {dst} ipproto udp sport {sport} dport 9")
        out_ifs.add(re.search(r" dev (\S+)", out).group(1))
    assert len(out_ifs) > 1, (tl.nodes[fork].name, out_ifs)


# ------------------------------------------------------------------------------------- predictive
GA0, GA1, GB = 2 * N_PLANES * N_PER_PLANE, 2 * N_PLANES * N_PER_PLANE + 1, 2 * N_PLANES * N_PER_PLANE + 2
#: (step, antenna slot) of the scheduled handovers in two_antenna_timeline()
HANDOVERS = ((4, GA0), (7, GA1), (10, GA0))


def two_antenna_timeline(n_steps: int = 14) -> Timeline:
    """The 4x4 +Grid of tests/handmade.py with gw-a on two antennas that hand over in turn.

    gw-a: antenna 0 (slot GA0) on sat-0-0, moves to sat-0-1 at step 4 and to sat-0-2 at step 10;
    antenna 1 (GA1) on sat-1-0, moves to sat-1-1 at step 7. A moved antenna is ACQUIRING (down) for
    the step of its move. Delays are set so that, each time, the antenna about to move is the one
    on the shortest-delay path from h-a to h-b (behind gw-b, one antenna on sat-2-2, never moving).
    """
    nodes = [Node(sat_name(p, s), "sat", {"shell": 0, "plane": p, "slot": s})
             for p in range(N_PLANES) for s in range(N_PER_PLANE)]
    n_sat = len(nodes)
    gw_a, gw_b, h_a, h_b = n_sat, n_sat + 1, n_sat + 2, n_sat + 3
    nodes += [Node("gw-a", "gateway", {"antennas": 2}), Node("gw-b", "gateway", {"antennas": 1}),
              Node("h-a", "host", {"gateway": "gw-a"}), Node("h-b", "host", {"gateway": "gw-b"})]
    a, b, cls, role, d0 = grid_isls()
    a += [gw_a, gw_a, gw_b, h_a, h_b]
    b += [sat_index(0, 0), sat_index(1, 0), sat_index(2, 2), gw_a, gw_b]
    cls += ["gsl"] * 3 + ["access"] * 2
    role += ["gsl"] * 3 + ["access"] * 2
    d0 += [1.0, 6.0, 1.7, 0.05, 0.05]
    n_links = len(a)
    peer = np.repeat(np.array(b, np.int32)[:, None], n_steps, axis=1)
    state = np.zeros((n_links, n_steps), np.uint8)
    delay = np.repeat(np.array(d0, np.float32)[:, None], n_steps, axis=1)
    peer[GA0, 4:] = sat_index(0, 1)
    delay[GA0, 4:8] = 8.0
    delay[GA0, 8:10] = 1.0
    peer[GA0, 10:] = sat_index(0, 2)
    delay[GA0, 10:] = 8.0
    peer[GA1, 7:] = sat_index(1, 1)
    for step, slot in HANDOVERS:
        state[slot, step] = Reason.ACQUIRING
    return Timeline(start=datetime(2024, 1, 1, tzinfo=UTC), step_s=1.0, nodes=nodes,
                    link_a=np.array(a, np.int32),
                    link_class=np.array([LINK_CLASSES.index(c) for c in cls], np.uint8),
                    link_role=np.array([LINK_ROLES.index(r) for r in role], np.uint8),
                    state=state, peer=peer, delay_ms=delay,
                    rate_mbps=np.full((n_links, n_steps), 100.0, np.float32),
                    loss_pct=np.zeros((n_links, n_steps), np.float32),
                    sat_lla=np.zeros((n_sat, n_steps, 3), np.float32))


def ping_through_playback(emu, count: int, interval_s: float) -> tuple[int, int, list]:
    """Ping h-a -> h-b while the timeline plays in real time from step 0; (sent, received, records)."""
    from emulator.clock import Playback

    tl = emu.timeline
    proc = emu.node("h-a").popen(["ping", "-n", "-q", "-i", str(interval_s), "-c", str(count), "-W", "1",
                                  emu.address_of("h-b")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        play = Playback(tl.step_s, 0, tl.n_steps - 1, lambda k: emu.apply_step(k).as_dict())
        thread = threading.Thread(target=play.run, args=(t0,), daemon=True)
        thread.start()
        out, _ = proc.communicate(timeout=count * interval_s + 20)
        play.stop()
        thread.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode(errors="replace") if isinstance(out, bytes) else out
    m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
    assert m, text
    return int(m.group(1)), int(m.group(2)), play.records


def test_predictive_loses_nothing_across_planned_handovers(make_emulation, record_property):
    from emulator.shaping import make_shaper
    from routing.base import get_protocol

    tl = two_antenna_timeline()
    ia, ib = tl.node_index("h-a"), tl.node_index("h-b")
    # the scenario is meaningful: before each handover, shortest-delay's path uses the moving antenna,
    # and predictive's does not
    sd, pr = get_protocol("shortest-delay"), get_protocol("predictive")
    for step, slot in HANDOVERS:
        assert slot in table_path(sd.compute(tl, step - 1), ia, ib)[1], step
        assert slot not in table_path(pr.compute(tl, step - 1), ia, ib)[1], step
    count, interval_s = 550, 0.02  # 11 s at 50 per second: steps 0..11, three handovers
    results = {}
    for protocol in ("shortest-delay", "predictive"):
        shaper, _ = make_shaper("userspace")
        emu = make_emulation(tl, shaper, protocol=protocol)
        assert ping(emu, "h-a", emu.address_of("h-b")) == 3
        sent, received, records = ping_through_playback(emu, count, interval_s)
        assert sent == count
        assert sum(1 for r in records if r.stats.get("handovers")) >= 2  # the handovers were played
        results[protocol] = sent - received
        emu.stop()
    print(f"\nlost of {count} pings at {1 / interval_s:.0f}/s across {len(HANDOVERS)} handovers: "
          + ", ".join(f"{k} {v}" for k, v in results.items()))
    record_property("losses", results)
    assert results["predictive"] == 0, results


# ------------------------------------------------------------------------------------- plugin
PLUGIN = "satnetem-example-protocol"
PLUGIN_PROTOCOL = "example-random-tiebreak"


@pytest.fixture
def installed_plugin(tmp_path):
    """The example plugin package pip-installed into this venv (from a copy, so the source tree gets
    no build files); uninstalled and forgotten at teardown, even if the test fails."""
    from routing import base

    src = tmp_path / "plugin"
    shutil.copytree(REPO / "examples" / "plugin", src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    pip = [sys.executable, "-m", "pip"]

    def uninstall() -> None:
        subprocess.run(pip + ["uninstall", "-y", PLUGIN], check=False, capture_output=True, text=True)
        base.PROTOCOLS.pop(PLUGIN_PROTOCOL, None)
        base._ORIGIN.pop(PLUGIN_PROTOCOL, None)
        base._BROKEN.pop(PLUGIN_PROTOCOL, None)
        sys.modules.pop("satnetem_example_protocol", None)
        importlib.invalidate_caches()

    try:
        r = subprocess.run(pip + ["install", "--no-deps", "--no-build-isolation", "--no-index", str(src)],
                           check=False, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        importlib.invalidate_caches()
        yield
    finally:
        uninstall()


def test_example_plugin_is_found_and_routes_real_traffic(installed_plugin, make_emulation):
    from routing.base import available_protocols, get_protocol

    proto = get_protocol(PLUGIN_PROTOCOL, seed=5)
    assert type(proto).__module__ == "satnetem_example_protocol"
    origin = {n: o for n, o, _ in available_protocols()}[PLUGIN_PROTOCOL]
    assert origin.startswith("entry point satnetem_example_protocol:RandomTiebreak (satnetem-example-protocol")
    cli = subprocess.run([sys.executable, "-m", "emulator.cli", "protocols"], check=False, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert PLUGIN_PROTOCOL in cli.stdout, cli.stdout + cli.stderr
    tl = grid_timeline()
    emu = make_emulation(tl, protocol=PLUGIN_PROTOCOL)
    assert ping(emu, "h-a", emu.address_of("h-b")) == 3
    emu.apply_step(1)  # handover and ISL outage
    assert ping(emu, "h-a", emu.address_of("h-b")) == 3
    assert ping(emu, "c-1", emu.address_of("h-a")) == 3
    assert not (emu.routes.link == OUTAGE_ISL).any() and (emu.routes.link == GSL_B).any()
