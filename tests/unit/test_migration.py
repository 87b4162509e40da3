"""The ``best`` request policy's plan (emulator.migration) and the state-transfer program over loopback."""

from __future__ import annotations

import math
import threading

import networkx as nx
import numpy as np
import pytest

from topologies.power import NORMAL
from topologies.scenario import TrafficSpec

SCENARIO = """
name = "best-plan"
[time]
start = "2024-03-01T00:00:00Z"
duration_s = 30
step_s = 1.0
[[constellation.shells]]
name = "shell"
planes = 6
sats_per_plane = 12
altitude_km = 550
inclination_deg = 53
[[ground.sites]]
name = "gs-london"
lat_deg = 51.5
lon_deg = -0.13
[[compute]]
name = "dc-a"
satellite = "sat-0-4"
[[compute]]
name = "dc-b"
satellite = "sat-0-3"
[power]
battery_wh = 1.0
initial_pct = 72.0
"""


@pytest.fixture(scope="module")
def timeline():
    from topologies.plan import plan_scenario
    from topologies.scenario import parse_scenario

    return plan_scenario(parse_scenario(SCENARIO, "<test>"))


def _rtt_ms(tl, a: str, b: str, k: int) -> float:
    g = nx.Graph()
    for link in np.flatnonzero((tl.state[:, k] == 0) & (tl.peer[:, k] >= 0)).tolist():
        g.add_edge(int(tl.link_a[link]), int(tl.peer[link, k]), w=float(tl.delay_ms[link, k]))
    return 2 * nx.shortest_path_length(g, tl.node_index(a), tl.node_index(b), weight="w")


def test_best_follows_the_documented_rule_on_the_plan(timeline):
    """RTT by networkx, power states from the timeline, score and stickiness applied here step by step."""
    from emulator.migration import BestRule, best_plan

    tl, rule = timeline, BestRule()
    plan = best_plan(tl, "shortest-delay", "sat-0-5", ["dc-a", "dc-b"], tl.n_steps, rate_pps=5, work_ms=4)
    order = [tl.nodes[i].name for i in tl.nodes_of("compute")]
    normal = {n: tl.compute_power[order.index(n)] == NORMAL for n in ("dc-a", "dc-b")}
    assert not normal["dc-a"].all() and normal["dc-b"].all()  # dc-a in shadow throttles, dc-b in the Sun does not
    service = 4 + (5 * 4 / 1e3) * 4 / (2 * (1 - 5 * 4 / 1e3))  # M/D/1 at 5 requests/s of 4 ms
    cur = None
    for k in range(tl.n_steps):
        score = {}
        for n in ("dc-a", "dc-b"):
            if not normal[n][k]:
                continue
            leaves = [j for j in range(k, tl.n_steps) if not normal[n][j]]
            left = (leaves[0] - k) * tl.step_s if leaves else math.inf
            score[n] = (_rtt_ms(tl, "sat-0-5", n, k) + service
                        + rule.battery_penalty_ms * min(1.0, max(0.0, 1 - left / rule.horizon_s)))
        low = min(score, key=score.__getitem__)
        if cur not in score or score[cur] > score[low] + rule.stickiness_ms:
            cur = low
        assert plan.computes[plan.best[k]] == cur, k
        assert plan.rtt_ms[k] == pytest.approx(_rtt_ms(tl, "sat-0-5", cur, k), abs=1e-3)


def test_best_rule_hand_built():
    """Three nodes over six 60 s steps; every score worked out by hand from docs/model.md's rule."""
    from emulator.migration import BestRule, choose, score_ms

    rule = BestRule(stickiness_ms=10.0, horizon_s=300.0, battery_penalty_ms=50.0)
    rtt = np.array([[10, 10, 10, 10, 10, 10],      # a: nearest, but throttles at step 3
                    [31, 31, 24, 22, 40, 40],      # b
                    [50, 50, 50, 50, 30, 20]], float)  # c: half loaded
    normal = np.ones((3, 6), bool)
    normal[0, 3:] = False
    service = np.full((3, 1), 5.0)
    rho = np.array([[0.0], [0.0], [0.5]])
    s = score_ms(rtt, service, rho, normal, 60.0, rule)
    # a: 10 + 5 + 50 x (1 - 180/300) = 35, then 45, 55 (120 s, 60 s left), then not usable
    # b: rtt + 5; c: rtt + 5 + 0.5 x 5 / (2 x 0.5) = rtt + 7.5
    want = np.array([[35, 45, 55, np.inf, np.inf, np.inf],
                     [36, 36, 29, 27, 45, 45],
                     [57.5, 57.5, 57.5, 57.5, 37.5, 27.5]])
    assert np.allclose(s, want)
    # a stays at step 1 (45 <= 36 + 10), b takes over at 2, stays at 4 (45 <= 37.5 + 10), c at 5 (45 > 37.5)
    assert choose(s, rule.stickiness_ms).tolist() == [0, 0, 1, 1, 1, 2]
    assert choose(s, 0.0).tolist() == [0, 1, 1, 1, 2, 2]  # no stickiness: every gain moves the users
    no_battery = score_ms(rtt, service, rho, normal, 60.0, BestRule(battery_penalty_ms=0.0))
    assert choose(no_battery, 10.0).tolist() == [0, 0, 0, 1, 1, 2]  # a kept until it throttles
    saturated = score_ms(rtt, service, np.array([[0.0], [1.0], [0.5]]), normal, 60.0, rule)
    assert np.isinf(saturated[1]).all()
    assert choose(np.full((2, 3), np.inf), 10.0).tolist() == [-1, -1, -1]


def test_a_saturated_node_is_avoided_and_best_flows_share_the_load(timeline):
    from emulator.migration import flow_loads

    tl = timeline
    busy = TrafficSpec(kind="request", src="gs-london", policy="fixed", dst="dc-b", rate_pps=250, work_ms=4)
    load, plans = flow_loads(tl, "shortest-delay", [busy, TrafficSpec(kind="request", src="sat-0-5",
                                                                      policy="best", name="u", work_ms=5)],
                             ["dc-a", "dc-b"], tl.n_steps)
    assert np.all(load[1] == 250)  # the fixed flow's 250 requests/s of 5 ms (default) saturate dc-b
    assert (plans["u"].best != 1).all()
    a, b = (TrafficSpec(kind="request", src="sat-0-5", policy="best", name=n, rate_pps=100, work_ms=6)
            for n in ("a", "b"))
    load, plans = flow_loads(tl, "shortest-delay", [a, b], ["dc-a", "dc-b"], tl.n_steps)
    both = np.flatnonzero((plans["a"].best >= 0) & (plans["b"].best >= 0))
    assert both.size
    # 100/s of 6 ms is 0.6 of a node: the second flow never goes where the first already is
    assert (plans["a"].best[both] != plans["b"].best[both]).all()
    assert load.sum(axis=0)[both] == pytest.approx(200)


def test_a_migration_is_planned_ahead_of_the_change_by_its_transfer_time(timeline):
    from emulator.migration import LEAD_MARGIN_S, BestRule, best_plan, plan_migrations

    tl = timeline
    # without the battery's look-ahead the change comes where dc-a throttles, late enough for a lead
    plan = best_plan(tl, "shortest-delay", "sat-0-5", ["dc-a", "dc-b"], tl.n_steps,
                     rule=BestRule(battery_penalty_ms=0.0))
    switch = int(np.flatnonzero(plan.computes[0] != np.array(plan.computes)[plan.best])[0])
    (m,) = plan_migrations(tl, plan, 10_000_000)
    assert (m.src, m.dst, m.switch_step) == ("dc-a", "dc-b", switch)
    # 10 MB at the slowest link up (100 Mbit/s ISLs here): 0.8 s, x 1.5, plus the margin
    assert m.start_step == switch - math.ceil((1.5 * 0.8 + LEAD_MARGIN_S) / tl.step_s)
    (m0,) = plan_migrations(tl, plan, 0)
    assert m0.start_step == m0.switch_step == switch


def test_state_transfer_over_loopback_is_counted_by_the_receiver():
    from emulator.traffic.migrate import receive, send

    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(receive("127.0.0.1", 47913, 10.0)))
    t.start()
    rec = send("127.0.0.1", 47913, 3_000_001, 10.0)
    t.join(10)
    assert got == [3_000_001]
    assert rec["bytes_acked"] == rec["bytes_sent"] == 3_000_001 and rec["ok"]
    assert rec["t_begin_unix_s"] <= rec["t_connected_unix_s"] <= rec["t_end_unix_s"]


@pytest.mark.parametrize("kw", [{"policy": "nearest"}, {"migrate_state_mb": -1}, {"migrate_state_mb": math.nan},
                                {"kind": "ping", "dst": "x"}])
def test_migrate_state_mb_is_checked(kw):
    args = {"kind": "request", "src": "h", "policy": "best", "migrate_state_mb": 5.0, **kw}
    with pytest.raises(ValueError, match="migrate_state_mb"):
        TrafficSpec(**args)


@pytest.mark.parametrize("kw, key", [({"stickiness_ms": -1}, "stickiness_ms"),
                                     ({"battery_horizon_s": 0}, "battery_horizon_s"),
                                     ({"battery_penalty_ms": math.nan}, "battery_penalty_ms"),
                                     ({"policy": "nearest", "migrate_state_mb": 0, "stickiness_ms": 5},
                                      "stickiness_ms")])
def test_best_rule_keys_are_checked(kw, key):
    args = {"kind": "request", "src": "h", "policy": "best", **kw}
    with pytest.raises(ValueError, match=key):
        TrafficSpec(**args)


def test_a_flows_keys_set_its_rule():
    from emulator.migration import BestRule, rule_of

    f = TrafficSpec(kind="request", src="h", policy="best", stickiness_ms=0, battery_penalty_ms=7.5)
    assert rule_of(f) == BestRule(stickiness_ms=0.0, horizon_s=300.0, battery_penalty_ms=7.5)


def test_latency_split_hand_built(tmp_path):
    from emulator.traffic.service import COLUMNS, latency_split

    p = tmp_path / "requests.csv"
    rows = [  # t, seq, target, addr, status, ok, total, service, network, new_conn
        ("100.0", 0, "a", "x", "200", 1, "60.0", "5.0", "55.0", 1),   # new connection: 2 x 20 ms RTT
        ("101.0", 1, "a", "x", "200", 1, "31.0", "5.0", "26.0", 0),   # kept alive: 1 x 20 ms
        ("102.0", 2, "b", "y", "200", 1, "47.0", "2.0", "45.0", 0),   # b: 40 ms
        ("103.0", 3, "b", "y", "timeout", 0, "", "", "", 0),          # failed: not counted
    ]
    p.write_text(",".join(COLUMNS) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    split = latency_split(str(p), lambda name, t: np.full(len(t), {"a": 20.0, "b": 40.0}[name]))
    assert split["network_ms"]["max"] == 40.0 and split["network_ms"]["mean"] == pytest.approx(100 / 3)
    assert split["queueing_ms"]["max"] == pytest.approx(15.0)  # 60 - 5 - 40
    assert split["queueing_ms"]["mean"] == pytest.approx((15 + 6 + 5) / 3)
    assert split["service_ms"]["p50"] == 5.0


def test_a_transfer_waits_until_the_new_node_is_usable_up_to_the_change(timeline):
    from emulator.migration import BestPlan, plan_migrations

    n = 12
    best = np.array([0] * 8 + [1] * 4)
    usable = np.ones((2, n), bool)
    usable[1, :6] = False  # the new node comes into view at step 6, two steps before the change
    plan = BestPlan(("a", "b"), best, np.full(n, 10.0), usable)
    (m,) = plan_migrations(timeline, plan, 10_000_000)  # its lead alone would begin at step 4
    assert (m.start_step, m.switch_step) == (6, 8)
    usable[1, :] = True
    (m,) = plan_migrations(timeline, BestPlan(("a", "b"), best, np.full(n, 10.0), usable), 10_000_000)
    assert (m.start_step, m.switch_step) == (4, 8)


def test_plan_lists_the_best_flows_migrations(tmp_path, capsys):
    import json

    from emulator.cli import main

    p = tmp_path / "best.toml"
    # over 10 minutes dc-a, nearer, serves until its coming throttle outweighs its lead
    p.write_text(SCENARIO.replace("duration_s = 30", "duration_s = 600").replace("step_s = 1.0", "step_s = 5.0")
                 + '[[traffic]]\nkind = "request"\nname = "users"\nsrc = "sat-0-5"\npolicy = "best"\n'
                 "migrate_state_mb = 10\n")
    assert main(["plan", str(p), "--json"]) == 0
    (m,) = json.loads(capsys.readouterr().out)["migrations"]
    assert (m["flow"], m["from"], m["to"], m["mb"]) == ("users", "dc-a", "dc-b", 10)
    assert m["start_step"] < m["switch_step"]


@pytest.mark.parametrize("protocol", ["shortest-delay", "ospf"])
def test_predicted_rtts_agree_with_routing_predict(timeline, protocol):
    from emulator.migration import predicted_rtts
    from routing.predict import predict

    tl = timeline
    computes = ["dc-a", "dc-b"]
    got = predicted_rtts(tl, protocol, ["sat-0-5", "gs-london"], computes, tl.n_steps)
    for src in ("sat-0-5", "gs-london"):
        si = tl.node_index(src)
        pred = predict(tl, protocol, [(si, tl.node_index(c)) for c in computes])
        want = np.stack([pred[(si, tl.node_index(c))].rtt_ms for c in computes])
        assert np.isfinite(want).any()
        assert np.allclose(got[src], np.where(np.isfinite(want), want, np.inf), rtol=0, atol=1e-9)
