"""OSPF configuration generation (pure): costs, interfaces per node, BIRD text checked by BIRD's own parser."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from handmade import GSL_A, GSL_B, grid_timeline, sat_index

from emulator.addressing import AddressPlan
from routing.base import get_protocol
from routing.daemon import DaemonProtocol, is_daemon_driven
from routing.ospf import (
    Ospf,
    OspfInterface,
    OspfOptions,
    bird_config,
    cost_push,
    costs_to_push,
    link_costs,
    next_handover,
    node_interfaces,
    preform_slots,
    push_slots,
)
from topologies.errors import ConfigError


def interfaces(tl, node: str, step: int):
    a = AddressPlan().assign(tl)
    snap = tl.snapshot(step)
    far = np.where(snap.peer >= 0, snap.peer, tl.link_a)
    cost = link_costs(snap.params[:, 0])
    return node_interfaces(tl.node_index(node), tl.link_a, far, tl.link_class, a.ifname_a, a.ifname_b, cost)


def test_costs_follow_delay_and_are_clipped():
    got = link_costs(np.array([0.0, 0.004, 2.34, 3.0, 700.0, np.nan, np.inf]))
    assert got.tolist() == [1, 1, 234, 300, 65535, 65535, 65535]
    assert link_costs(np.array([2.3456]), cost_per_ms=1000).tolist() == [2346]
    # a shorter delay never costs more
    d = np.sort(np.random.default_rng(1).uniform(0, 50, 1000))
    assert (np.diff(link_costs(d)) >= 0).all()


def test_cost_tolerance_holds_small_drifts_and_passes_big_changes():
    pushed = np.array([1000, 1000, 1000, 1000, 1], np.int32)
    wanted = np.array([1040, 960, 1060, 500, 2], np.int32)
    assert costs_to_push(pushed, wanted, 5.0).tolist() == [1000, 1000, 1060, 500, 2]
    assert costs_to_push(pushed, wanted, 0.0).tolist() == wanted.tolist()
    # a slow drift is pushed once it has added up to more than the tolerance, never lost
    cur = np.array([1000], np.int32)
    for c in range(1001, 1100):
        cur = costs_to_push(cur, np.array([c]), 5.0)
    assert cur.tolist() == [1051]  # 1051 is the first cost more than 5 % above 1000


def test_satellite_has_four_isls_and_its_antenna():
    tl = grid_timeline()
    ifs = interfaces(tl, "sat-0-0", 0)
    assert [(i.name, i.stub) for i in ifs] == [("aft", False), ("fore", False), (f"g{GSL_A}", False),
                                                ("left", False), ("right", False)]
    fore = next(i for i in ifs if i.name == "fore")
    assert fore.cost == round(2.0 * 100)  # sat-0-0 -> sat-0-1 is 2.0 ms


def test_host_subnets_are_stubs_at_their_router():
    tl = grid_timeline()
    gw = interfaces(tl, "gw-a", 0)
    assert [(i.name, i.stub) for i in gw] == [("ant0", False), (f"h{tl.n_links - 3}", True)]
    sat = interfaces(tl, "sat-1-2", 0)  # the compute node hangs off sat-1-2
    assert [i.name for i in sat if i.stub] == [f"h{tl.n_links - 1}"]


def test_antenna_ends_take_the_ground_retransmission_interval():
    tl = grid_timeline()
    assert [(i.name, i.ground) for i in interfaces(tl, "gw-a", 0) if not i.stub] == [("ant0", True)]
    sat = {i.name: i.ground for i in interfaces(tl, "sat-0-0", 0)}
    assert sat == {"aft": False, "fore": False, f"g{GSL_A}": True, "left": False, "right": False}
    text = bird_config("10.64.0.7", [OspfInterface("fore", 230), OspfInterface("g32", 150, ground=True)],
                       OspfOptions(retransmit_s=5, gsl_retransmit_s=2))
    assert 'interface "fore" { type ptp; cost 230; hello 1; dead 10; retransmit 5;' in text
    assert 'interface "g32" { type ptp; cost 150; hello 1; dead 10; retransmit 2;' in text


def test_host_subnets_are_announced_whatever_their_link():
    # a stubnet, not the interface's own stub: the router-LSA does not change when the access link comes
    # back with a restored gateway, so the LSA with the new adjacency is not held for MinLSInterval
    ifs = [OspfInterface("ant0", 150), OspfInterface("h35", 1, stub=True)]
    text = bird_config("10.128.5.1", ifs, announced=("10.128.4.0/24",))
    assert "stubnet 10.128.4.0/24 { cost 1; };" in text
    with pytest.raises(ConfigError, match="announced"):
        bird_config("10.128.5.1", ifs, announced=("10.128.4.0/33",))


def test_handover_moves_the_antenna_interface_between_satellites():
    tl = grid_timeline()
    g = f"g{GSL_B}"
    assert g in [i.name for i in interfaces(tl, "sat-2-2", 0)]
    assert g not in [i.name for i in interfaces(tl, "sat-2-2", 1)]
    assert g in [i.name for i in interfaces(tl, "sat-2-3", 1)]
    # step 2: gw-a's antenna is parked at the gateway: no satellite lists it, the gateway keeps ant0
    assert not any(f"g{GSL_A}" in [i.name for i in interfaces(tl, f"sat-0-{s}", 2)] for s in range(4))
    assert next(i.name for i in interfaces(tl, "gw-a", 2)) == "ant0"
    assert sat_index(0, 0) == tl.node_index("sat-0-0")


def test_config_text_is_deterministic_and_complete():
    ifs = [OspfInterface("fore", 230), OspfInterface("h40", 1, stub=True)]
    o = OspfOptions(hello_s=2, dead_s=7)
    text = bird_config("10.64.0.7", ifs, o, "/tmp/x.log", "sat-0-0", hidden=("10.0.0.0/10",))
    assert text == bird_config("10.64.0.7", ifs, o, "/tmp/x.log", "sat-0-0", hidden=("10.0.0.0/10",))
    assert "router id 10.64.0.7;" in text and "krt_prefsrc = 10.64.0.7" in text
    assert 'interface "lo" 10.64.0.7/32 { stub yes;' in text
    assert 'interface "fore" { type ptp; cost 230; hello 2; dead 7;' in text
    assert 'interface "h40" { stub yes; cost 1; }' in text
    assert "stubnet 10.0.0.0/10 { hidden; summary; }" in text
    assert "/etc/bird" not in text and "/run/bird" not in text
    # only the destinations given go into the kernel; OSPF itself still learns everything
    few = bird_config("10.64.0.7", ifs, o, exported=("10.128.0.0/24", "10.64.0.9/32"))
    assert "if net ~ [ 10.128.0.0/24, 10.64.0.9/32 ] then { krt_prefsrc = 10.64.0.7; accept; } reject;" in few
    assert "ipv4 { import all; export none; };" in few


@pytest.mark.skipif(shutil.which("bird") is None, reason="BIRD 2 (package bird2) is not installed")
def test_bird_accepts_the_generated_configuration(tmp_path):
    tl = grid_timeline()
    a = AddressPlan().assign(tl)
    for node in ("sat-0-0", "gw-a", "sat-1-2"):
        text = bird_config("10.64.0.1", interfaces(tl, node, 0), OspfOptions(), str(tmp_path / "n.log"), node,
                           hidden=(a.plan.link_pool,), announced=("10.128.0.0/24",))
        conf = tmp_path / f"{node}.conf"
        conf.write_text(text)
        r = subprocess.run(["bird", "-p", "-c", str(conf)], check=False, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    # with the kernel's table kept to some destinations (large constellations), and with none
    for exported in (("10.128.0.0/24", "10.64.0.9/32"), ()):
        conf.write_text(bird_config("10.64.0.1", interfaces(tl, "sat-0-0", 0), exported=exported))
        r = subprocess.run(["bird", "-p", "-c", str(conf)], check=False, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    # and BIRD's parser is a real check: a broken file is refused
    conf.write_text(text.replace("type ptp;", "type bogus;"))
    assert subprocess.run(["bird", "-p", "-c", str(conf)], check=False, capture_output=True).returncode != 0


@pytest.mark.parametrize("kw, key", [({"hello_s": 0}, "hello_s"), ({"hello_s": 3, "dead_s": 3}, "dead_s"),
                                     ({"retransmit_s": 1}, "retransmit_s"),
                                     ({"gsl_retransmit_s": 1}, "gsl_retransmit_s"), ({"tick_s": 1.5}, "tick_s"),
                                     ({"cost_per_ms": 0}, "cost_per_ms"), ({"ecmp": "yes"}, "ecmp"),
                                     ({"cost_tolerance_pct": -1}, "cost_tolerance_pct")])
def test_bad_options_name_the_field(kw, key):
    with pytest.raises(ConfigError, match=key):
        OspfOptions(**kw)


def test_bad_inputs_are_refused():
    with pytest.raises(ConfigError, match="router id"):
        bird_config("10.64.0.300", [])
    with pytest.raises(ConfigError, match="log path"):
        bird_config("10.64.0.1", [], log_path='/tmp/a"; include "/etc/passwd')
    with pytest.raises(ConfigError, match="exported prefix"):
        bird_config("10.64.0.1", [], exported=("10.128.0.0/33",))
    with pytest.raises(ConfigError, match="interface name"):
        OspfInterface('fo"re', 1)
    with pytest.raises(ConfigError, match="cost"):
        OspfInterface("fore", 0)


def test_registered_daemon_driven_protocol():
    p = get_protocol("ospf", hello_s=1, dead_s=4)
    assert isinstance(p, Ospf) and isinstance(p, DaemonProtocol) and is_daemon_driven(p)
    assert p.options.dead_s == 4
    assert not is_daemon_driven(get_protocol("shortest-delay"))
    with pytest.raises(ConfigError, match="daemon-driven"):
        p.compute(grid_timeline(), 0)


def test_routing_layer_stays_pure():
    code = ("import sys, routing.ospf, routing.daemon; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('emulator', 'pyroute2', 'mininet')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------- cost pushes in rounds
def _drifting_costs(n_links: int = 60, n_steps: int = 120, seed: int = 3) -> np.ndarray:
    """Costs of ``n_links`` links over ``n_steps`` 1 s steps, each drifting linearly by up to +-40 %
    over the run (as inter-plane ISLs near the turn of the orbit do), shape (n_steps, n_links)."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(100, 700, n_links)
    slope = rng.uniform(-0.4, 0.4, n_links) * start / n_steps
    return link_costs((start + slope * np.arange(n_steps)[:, None]) / 100.0)


def _ring(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Near and far node of the ``n`` links of a ring of ``n`` routers: link i joins i and i + 1."""
    return np.arange(n), (np.arange(n) + 1) % n


@pytest.mark.parametrize("interval_s, tol", [(10.0, 10.0), (5.0, 5.0), (3.0, 0.0), (0.0, 5.0)])
def test_each_router_is_pushed_at_its_own_slot_and_leaves_no_drift_past_it(interval_s, tol):
    wanted = _drifting_costs()
    n = wanted.shape[1]
    near, far = _ring(n)
    slots = push_slots(interval_s, 1.0)
    a = b = wanted[0]
    per_router: dict[int, list[int]] = {}
    per_step = []
    for k in range(1, len(wanted)):
        due = (k + np.arange(n)) % slots == 0
        a0, b0 = a, b
        a, b, routers = cost_push(a, b, wanted[k], near, far, np.empty(0, int), due, tol)
        assert due[routers].all()  # never outside its slot
        for r in routers.tolist():
            per_router.setdefault(r, []).append(k)
        # a router's announced costs change only when it is pushed, and then to what its links want now
        moved = set(near[a != a0].tolist()) | set(far[b != b0].tolist())
        assert moved <= set(routers.tolist())
        pushed_a, pushed_b = np.isin(near, routers), np.isin(far, routers)
        assert (a[pushed_a] == wanted[k][pushed_a]).all() and (b[pushed_b] == wanted[k][pushed_b]).all()
        # at its slot, no router is left announcing a cost off by more than the tolerance
        for ann, owner in ((a, near), (b, far)):
            off = np.abs(wanted[k].astype(float) - ann) > ann * tol / 100.0
            assert not (off & due[owner]).any()
        per_step.append(len(routers))
    assert sum(per_step) >= 10
    # at most once per interval per router; and spread: no step carries more than its slot's routers
    assert all(min(np.diff(ks), default=slots) >= slots for ks in per_router.values())
    assert max(per_step) <= -(-n // slots)


def test_slots_spread_the_pushes_and_handovers_go_at_once():
    wanted = _drifting_costs()
    n = wanted.shape[1]
    near, far = _ring(n)
    none = np.empty(0, int)

    def per_step(slots: int) -> list[int]:
        a = b = wanted[0]
        out = []
        for k in range(1, len(wanted)):
            a, b, r = cost_push(a, b, wanted[k], near, far, none, (k + np.arange(n)) % slots == 0, 5.0)
            out.append(len(r))
        return out

    every, spread = per_step(1), per_step(10)
    # never more pushes than at every step, and the busiest step carries fewer
    assert sum(spread) <= sum(every) and max(spread) < max(every)
    # a handed-over slot takes its new cost on both ends at its step, outside any slot; the others wait
    a = b = wanted[0].copy()
    new = a.copy()
    new[[4, 9]] = [a[4] * 3, a[9] // 2]
    new[11] = a[11] * 3
    got_a, got_b, routers = cost_push(a, b, new, near, far, np.array([4, 9]), np.zeros(n, bool), 5.0)
    assert got_a[[4, 9]].tolist() == new[[4, 9]].tolist() == got_b[[4, 9]].tolist()
    assert got_a[11] == a[11] and got_b[11] == b[11] and len(routers) == 0


def test_far_end_cost_is_announced_by_the_far_router():
    tl = grid_timeline()
    a = AddressPlan().assign(tl)
    snap = tl.snapshot(0)
    far = np.where(snap.peer >= 0, snap.peer, tl.link_a)
    near_cost = np.full(tl.n_links, 111, np.int32)
    far_cost = np.full(tl.n_links, 222, np.int32)
    node = tl.node_index("sat-0-0")
    ifs = node_interfaces(node, tl.link_a, far, tl.link_class, a.ifname_a, a.ifname_b, near_cost, far_cost)
    by_name = {i.name: i.cost for i in ifs if not i.stub}
    for l in range(tl.n_links):
        if tl.link_a[l] == node and a.ifname_a[l] in by_name:
            assert by_name[a.ifname_a[l]] == 111
        elif far[l] == node and tl.link_a[l] != node and a.ifname_b[l] in by_name:
            assert by_name[a.ifname_b[l]] == 222
    assert set(by_name.values()) == {111, 222}


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), "10", True, 1e6])
def test_bad_push_interval_is_refused(value):
    with pytest.raises(ConfigError, match="cost_push_interval_s"):
        OspfOptions(cost_push_interval_s=value)


_SCENARIO = """\
name = "o"

[time]
duration_s = 3
step_s = 1.0

[constellation]
shells = [{name = "s", planes = 4, sats_per_plane = 4, altitude_km = 550, inclination_deg = 53, phasing = 1}]

[routing]
protocol = "shortest-delay"

[routing.ospf]
cost_tolerance_pct = 20
"""


def test_scenario_routing_ospf_table_sets_the_options(tmp_path):
    from routing.base import scenario_protocol
    from topologies.scenario import load_scenario

    f = tmp_path / "s.toml"
    f.write_text(_SCENARIO + "cost_push_interval_s = 30\n")
    sc = load_scenario(f)
    p = scenario_protocol(sc, "ospf")
    assert (p.options.cost_tolerance_pct, p.options.cost_push_interval_s) == (20, 30)
    assert scenario_protocol(sc).name == "shortest-delay"


@pytest.mark.parametrize("line, key, what", [
    ("cost_push_interval_s = -5", "routing.ospf.cost_push_interval_s", "must be in [0, 86400] s"),
    ("cost_tolerance_pct = 100", "routing.ospf.cost_tolerance_pct", "must be in [0, 100)"),
    ("push_every = 3", "routing.ospf.push_every", "unknown key 'push_every'"),
])
def test_bad_routing_ospf_key_is_one_line_with_file_line_and_key(tmp_path, capsys, line, key, what):
    from emulator.cli import main

    f = tmp_path / "s.toml"
    text = _SCENARIO.replace("cost_tolerance_pct = 20\n", "") + line + "\n"
    f.write_text(text)
    # the scenario's own protocol is shortest-delay: the ospf table is checked anyway (compare runs ospf too)
    assert main(["plan", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    n = len(text.splitlines())
    assert err.startswith(f"satnetem: error: {f}:{n}, key '{key}': "), err
    assert what in err


def _preform_by_hand(peer, now, up, spare_at, step, lead):
    """preform_slots written as the plain loop over slots and steps it stands for."""
    out = []
    for l in range(len(now)):
        ok = False
        if now[l] >= 0 and up[l]:
            for k in range(step + 1, min(step + lead, peer.shape[1] - 1) + 1):
                if peer[l, k] != now[l]:
                    ok = peer[l, k] >= 0 and peer[l, k] == spare_at[l]
                    break
        out.append(ok)
    return out


def test_preform_slots_equals_the_loop_it_stands_for():
    rng = np.random.default_rng(3)
    for _ in range(200):
        n, t = int(rng.integers(1, 6)), int(rng.integers(1, 9))
        peer = rng.integers(-1, 3, size=(n, t))
        step = int(rng.integers(0, t))
        now = peer[:, step].copy()
        up = rng.random(n) < 0.8
        spare_at = rng.integers(-1, 3, size=n)
        lead = int(rng.integers(0, 5))
        got = preform_slots(peer[:, step + 1:step + 1 + lead], now, up, spare_at).tolist()
        assert got == _preform_by_hand(peer, now, up, spare_at, step, lead), (peer, now, up, spare_at, step, lead)
    when, to = next_handover(np.array([[4, 4, 4, 7]])[:, 1:3], np.array([4]), 0)
    assert (when.tolist(), to.tolist()) == ([-1], [-1])  # the change at step 3 is beyond the 2-step lead
    when, to = next_handover(np.array([[4, 4, 4, 7]])[:, 3:], np.array([4]), 2)
    assert (when.tolist(), to.tolist()) == ([3], [7])


def test_spare_brought_up_ahead_is_kept_out_of_the_kernel(tmp_path):
    ifs = interfaces(grid_timeline(), "gw-b", 0) + [OspfInterface("ant0b", 65535, preformed=True)]
    text = bird_config("10.64.0.7", ifs)
    assert 'interface "ant0b" { type ptp; cost 65535;' in text
    assert 'export filter { if ifname = "ant0b" then reject; krt_prefsrc = 10.64.0.7; accept; };' in text
    few = bird_config("10.64.0.7", ifs, exported=("10.128.0.0/24",))
    assert 'export filter { if ifname = "ant0b" then reject; if net ~ [ 10.128.0.0/24 ]' in few
    assert "ifname" not in bird_config("10.64.0.7", ifs[:-1])
    if shutil.which("bird"):
        for t in (text, few):
            conf = tmp_path / "gw.conf"
            conf.write_text(t)
            r = subprocess.run(["bird", "-p", "-c", str(conf)], check=False, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("value", [-1, float("nan"), "15", True, 3601])
def test_bad_handover_lead_is_refused(value):
    with pytest.raises(ConfigError, match="handover_lead_s"):
        OspfOptions(handover_lead_s=value)
