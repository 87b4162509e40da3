"""The scripting API's plan-only model against networkx: predicted RTTs, failures and restores, and the
errors a script can make. No root, no Mininet (one test proves it in a process without either)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from emulator.api import plan_only
from topologies.errors import ConfigError, SatnetemError
from topologies.timeline import LINK_CLASSES, Reason

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "examples" / "scripted.toml"
SRC, DST = "h-london", "h-new-york"


@pytest.fixture(scope="module")
def plan():
    return plan_only(SCENARIO, duration_s=6)


@pytest.fixture
def model(plan):
    """A fresh model on the module's timeline (failures and clock of its own)."""
    from emulator.api import PlanOnly

    return PlanOnly(plan.scenario, plan.timeline, plan.protocol)


def nx_graph(tl, step: int, without_nodes=(), without_pairs=()) -> nx.Graph:
    """The up links of ``step`` straight from the timeline's arrays, weighted by one-way delay (ms);
    between two nodes joined by several slots, the lightest."""
    g = nx.Graph()
    g.add_nodes_from(range(len(tl.nodes)))
    gone = {frozenset(p) for p in without_pairs}
    for l in range(tl.n_links):
        a, b = int(tl.link_a[l]), int(tl.peer[l, step])
        if tl.state[l, step] != 0 or b < 0 or a in without_nodes or b in without_nodes or frozenset((a, b)) in gone:
            continue
        w = float(tl.delay_ms[l, step])
        if not g.has_edge(a, b) or g[a][b]["weight"] > w:
            g.add_edge(a, b, weight=w)
    return g


def nx_rtt_ms(g: nx.Graph, tl, src: str, dst: str) -> float:
    try:
        return 2 * nx.shortest_path_length(g, tl.node_index(src), tl.node_index(dst), weight="weight")
    except nx.NetworkXNoPath:
        return math.nan


def ids(tl, pair):
    return tuple(tl.node_index(n) for n in pair)


def test_predicted_rtt_equals_networkx_at_every_step(model):
    tl = model.timeline
    for k in range(tl.n_steps):
        model.goto(k)
        p = model.path(SRC, DST)
        assert p.reachable and p.nodes[0] == SRC and p.nodes[-1] == DST
        assert p.rtt_ms == pytest.approx(nx_rtt_ms(nx_graph(tl, k), tl, SRC, DST), abs=1e-3)


def test_failed_isl_on_the_path_is_routed_around_as_networkx_says(model):
    tl = model.timeline
    before = model.path(SRC, DST)
    hop = before.isl_hops[0]
    model.fail(hop)
    after = model.path(SRC, DST)
    expected = nx_rtt_ms(nx_graph(tl, 0, without_pairs=[ids(tl, hop)]), tl, SRC, DST)
    assert after.rtt_ms == pytest.approx(expected, abs=1e-3)
    assert after.rtt_ms > before.rtt_ms + 1.0  # this hop's detour costs milliseconds here
    assert after.nodes != before.nodes
    assert all({u, v} != set(hop) for u, v in zip(after.nodes, after.nodes[1:]))
    link = model.link(*hop)
    assert not link.up and link.reason == "failed" and link.kind == "isl"
    st = model.state()
    assert st.down_by_reason == {"failed": 1} and st.isl_down == 1 and st.failures == ("~".join(sorted(hop)),)
    model.restore(hop)
    assert model.path(SRC, DST).rtt_ms == pytest.approx(before.rtt_ms, abs=1e-9)
    assert model.link(*hop).up and model.state().failures == ()


def test_failed_satellite_takes_all_its_links_down(model):
    tl = model.timeline
    before = model.path(SRC, DST)
    sat = before.nodes[3]  # h > gs > first satellite > second satellite
    assert model.kind_of(sat) == "sat"
    model.fail(sat)
    i = tl.node_index(sat)
    touching = ((tl.link_a == i) | (tl.peer[:, 0] == i)) & (tl.state[:, 0] == 0)
    st = model.state()
    assert st.down_by_reason == {"failed": int(touching.sum())} and st.isl_down == int(touching.sum()) == 4
    expected = nx_rtt_ms(nx_graph(tl, 0, without_nodes=[i]), tl, SRC, DST)
    after = model.path(SRC, DST)
    assert after.rtt_ms == pytest.approx(expected, abs=1e-3) and sat not in after.nodes


def test_failed_gateway_makes_its_host_unreachable(model):
    model.fail("gs-new-york")
    p = model.path(SRC, DST)
    assert not p.reachable and math.isnan(p.rtt_ms) and p.nodes == ()
    assert model.state().gsl_down == 1
    model.restore("gs-new-york")
    assert model.path(SRC, DST).reachable


def test_scheduled_failure_holds_from_its_step_until_its_restore(model):
    tl = model.timeline
    hop = model.path(SRC, DST).isl_hops[0]
    model.fail(hop, at=1.5)  # seconds: the first step at or after 1.5 s is step 2
    model.restore(hop, at=4)
    pair = ids(tl, hop)
    for k in range(tl.n_steps):
        model.goto(k)
        failed = 2 <= k < 4
        g = nx_graph(tl, k, without_pairs=[pair] if failed else [])
        assert model.rtt_ms(SRC, DST) == pytest.approx(nx_rtt_ms(g, tl, SRC, DST), abs=1e-3), k
        assert model.link(*hop).up is not failed


def test_predictive_routing_does_not_see_an_unplanned_failure_coming(plan):
    from emulator.api import PlanOnly
    from routing.base import get_protocol

    model = PlanOnly(plan.scenario, plan.timeline, get_protocol("predictive"))
    hop = model.path(SRC, DST).isl_hops[0]
    table = model.routes()
    model.fail(hop, at=1)
    same = model.routes()  # step 0 again, with a failure scheduled at step 1: nothing moves ahead of it
    assert np.array_equal(table.next_hop, same.next_hop) and hop in model.path(SRC, DST).isl_hops
    model.step()
    nodes = model.path(SRC, DST).nodes
    assert nodes and all({u, v} != set(hop) for u, v in zip(nodes, nodes[1:]))


def test_failures_override_a_snapshot_without_changing_it(plan):
    from emulator.api import Failures

    tl = plan.timeline
    f = Failures(tl)
    snap = tl.snapshot(0)
    snap.state[5] = Reason.RANGE  # already down: keeps its reason
    sat = tl.nodes[int(tl.link_a[5])].name
    f.add(f.target(sat), 0, True)
    out = f.apply(snap)
    assert out.state[5] == Reason.RANGE and snap.state[5] == Reason.RANGE
    i = tl.node_index(sat)
    mine = (tl.link_a == i) | (snap.peer == i)
    assert (out.state[mine & (snap.state == 0)] == Reason.FAILED).all()
    assert (out.state[~mine] == snap.state[~mine]).all() and (snap.state[mine & (np.arange(tl.n_links) != 5)] == 0).all()
    assert f.apply(tl.snapshot(0)).step == 0 and f.failed(f.target(sat), 3) and not Failures(tl).active(0)


def test_what_if_is_an_independent_copy_at_the_same_step(model):
    hop = model.path(SRC, DST).isl_hops[0]
    model.goto(2)
    model.fail("sat-0-0")
    before = model.rtt_ms(SRC, DST)
    copy = model.what_if()
    assert copy.current_step == 2 and copy.state().failures == ("sat-0-0",)
    copy.fail(hop)
    copy.step()
    assert copy.rtt_ms(SRC, DST) > before and copy.current_step == 3
    assert model.current_step == 2 and model.rtt_ms(SRC, DST) == before and model.state().failures == ("sat-0-0",)
    model.restore("sat-0-0")
    assert copy.state().failures == ("sat-0-0", "~".join(sorted(hop)))


def test_script_errors_are_one_line_config_errors(model):
    with pytest.raises(ConfigError, match="unknown node 'sat-99-99'"):
        model.fail("sat-99-99")
    with pytest.raises(ConfigError, match="no link slot joins 'sat-0-0' and 'sat-5-5'"):
        model.fail(("sat-0-0", "sat-5-5"))
    with pytest.raises(ConfigError, match="not failed"):
        model.restore(("sat-0-0", "sat-0-1"))
    with pytest.raises(ConfigError, match="must be a step"):
        model.fail("sat-0-0", at=99)
    with pytest.raises(ConfigError, match=r"must be a step \(int\) or seconds"):
        model.fail("sat-0-0", at="soon")
    with pytest.raises(ConfigError, match=r"at must be a number in \[0, 6\)"):
        model.fail("sat-0-0", at=float("nan"))
    model.goto(3)
    with pytest.raises(ConfigError, match="before the current step 3"):
        model.fail("sat-0-0", at=1)
    with pytest.raises(ConfigError, match="a node name or a pair"):
        model.fail(42)
    with pytest.raises(SatnetemError, match="plan-only"):
        model.node(SRC)
    with pytest.raises(ConfigError, match="duration_s must be a number"):
        plan_only(SCENARIO, duration_s=-1)
    with pytest.raises(ConfigError, match="step_s"):
        plan_only(SCENARIO, duration_s=2, step_s=5)
    with pytest.raises(ConfigError, match="unknown routing protocol"):
        plan_only(SCENARIO, duration_s=2, protocol="nope")


def test_clock_by_hand_and_addresses(model):
    tl = model.timeline
    assert model.current_step == 0 and model.time_s == 0.0 and model.last_step == tl.n_steps - 1 == 5
    model.step()
    assert model.current_step == 1 and model.time_s == tl.step_s
    model.run(seconds=2.0)
    assert model.current_step == 3
    model.run()
    assert model.current_step == 5
    with pytest.raises(SatnetemError, match="ends at step 5"):
        model.step()
    assert model.address_of(SRC).startswith("10.128.") and model.address_of("sat-0-0").startswith("10.64.")
    assert len(model.names) == len(tl.nodes) and model.names_of("gateway") == ["gs-london", "gs-new-york"]
    isl = tl.link_class == LINK_CLASSES.index("isl")
    assert model.state().isl_up == int((tl.state[isl, 5] == 0).sum())


def test_plan_only_runs_without_root_and_without_mininet_or_pyroute2():
    code = (
        "import sys\n"
        "from emulator.api import plan_only\n"
        f"m = plan_only({str(SCENARIO)!r}, duration_s=2)\n"
        "hop = m.path('h-london', 'h-new-york').isl_hops[0]\n"
        "m.fail(hop)\n"
        "assert m.path('h-london', 'h-new-york').reachable\n"
        "bad = sorted(x for x in sys.modules if x.split('.')[0] in ('mininet', 'pyroute2'))\n"
        "print(' '.join(bad) or 'clean')\n"
    )
    def drop_root():
        if os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)

    r = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120,
                       preexec_fn=drop_root, env={**os.environ, "PYTHONPATH": str(ROOT), "HOME": "/nonexistent"})
    assert r.returncode == 0 and r.stdout.strip() == "clean", r.stdout + r.stderr[-2000:]
