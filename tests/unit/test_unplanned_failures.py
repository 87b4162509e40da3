"""The scripting API's fail()/restore() against scheduled events ([[events]]): the same targets (a node, a
link as two names, one gateway antenna) resolve to the same link slots, but an unplanned failure is not in
the timeline, so ``shortest-delay`` sees it at the step it happens and ``predictive`` does not see it
before then; the same failure scheduled is seen one step ahead by ``predictive``. Paths are checked
against networkx on the timeline's own arrays."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from emulator.api import PlanOnly, plan_only
from routing.base import get_protocol
from topologies.errors import ConfigError
from topologies.scenario import parse_scenario
from topologies.timeline import LINK_CLASSES, Reason

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "examples" / "scripted.toml").read_text().replace("duration_s = 60", "duration_s = 4")
SRC, DST = "h-london", "h-new-york"
T = 2  # the failure's step


def nx_pairs(tl, step: int, without=frozenset()) -> list[frozenset[int]]:
    """Node pairs of the least-delay path SRC -> DST at ``step`` (networkx, up slots only)."""
    g = nx.Graph()
    for l in range(tl.n_links):
        a, b = int(tl.link_a[l]), int(tl.peer[l, step])
        if tl.state[l, step] != Reason.UP or b < 0 or frozenset((a, b)) == without:
            continue
        if not g.has_edge(a, b) or g[a][b]["weight"] > tl.delay_ms[l, step]:
            g.add_edge(a, b, weight=float(tl.delay_ms[l, step]))
    p = nx.shortest_path(g, tl.node_index(SRC), tl.node_index(DST), weight="weight")
    return [frozenset(e) for e in zip(p, p[1:])]


def pairs_of(model) -> list[frozenset[int]]:
    tl = model.timeline
    nodes = [tl.node_index(n) for n in model.path(SRC, DST).nodes]
    return [frozenset(e) for e in zip(nodes, nodes[1:])]


@pytest.fixture(scope="module")
def base():
    return plan_only(parse_scenario(TEXT, "<test>"))


@pytest.fixture(scope="module")
def hop(base):
    """An ISL on the least-delay path at steps T - 1 and T (networkx), as two names."""
    tl = base.timeline
    sats = {i for i, n in enumerate(tl.nodes) if n.kind == "sat"}
    common = [e for e in set(nx_pairs(tl, T - 1)) & set(nx_pairs(tl, T)) if e <= sats]
    assert common, "the test needs an ISL on the path at both steps"
    a, b = sorted(common[0])
    return tl.nodes[a].name, tl.nodes[b].name


@pytest.mark.parametrize("protocol", ["shortest-delay", "predictive"])
def test_unplanned_fail_is_seen_at_its_step_and_never_before(base, hop, protocol):
    tl = base.timeline
    pair = frozenset(tl.node_index(n) for n in hop)
    clean = PlanOnly(base.scenario, tl, get_protocol(protocol))
    model = PlanOnly(base.scenario, tl, get_protocol(protocol))
    model.fail(hop, at=T)
    for k in range(T):  # before it happens: the same table as with no failure at all, through the link
        clean.goto(k)
        model.goto(k)
        assert np.array_equal(model.routes().next_hop, clean.routes().next_hop), k
    assert pair in pairs_of(model)  # at T - 1, even predictive still routes over it
    model.step()  # step T: gone from the path, which is networkx's without the link
    assert model.current_step == T and pair not in pairs_of(model)
    assert pairs_of(model) == nx_pairs(tl, T, without=pair)
    assert (model.snapshot().state[model.failures.mask(model.failures.target(hop), model.snapshot().peer)]
            == Reason.FAILED).all()


def test_the_same_failure_scheduled_is_seen_a_step_ahead_by_predictive_only(hop):
    """The contrast that makes the test above able to fail: planned, predictive leaves the link at T - 1."""
    event = f'\n[[events]]\nkind = "fail"\ntarget = ["{hop[0]}", "{hop[1]}"]\nat_s = {T}\n'
    planned = plan_only(parse_scenario(TEXT + event, "<test>"))
    tl = planned.timeline
    pair = frozenset(tl.node_index(n) for n in hop)
    slots = planned.failures.mask(planned.failures.target(hop), tl.peer[:, T])
    assert slots.sum() == 1 and (tl.state[slots, T] == Reason.SCHEDULED).all()
    for protocol, leaves_early in (("shortest-delay", False), ("predictive", True)):
        model = PlanOnly(planned.scenario, tl, get_protocol(protocol))
        model.goto(T - 1)
        assert (pair not in pairs_of(model)) is leaves_early, protocol
        model.goto(T)
        assert pair not in pairs_of(model), protocol


def test_fail_targets_resolve_as_event_targets(base, hop):
    tl = base.timeline
    gw = tl.node_index("gs-london")
    antennas = [l for l in range(tl.n_links)
                if tl.link_a[l] == gw and tl.link_class[l] == LINK_CLASSES.index("gsl")]
    assert antennas
    model = PlanOnly(base.scenario, tl, get_protocol("shortest-delay"))
    model.fail("gs-london", antenna=len(antennas) - 1)
    snap = model.snapshot()
    failed = np.flatnonzero(snap.state == Reason.FAILED)
    last = antennas[-1]
    assert list(failed) == ([last] if tl.state[last, 0] == Reason.UP else [])
    assert model.state().failures == (f"gs-london antenna {len(antennas) - 1}",)
    model.restore("gs-london", antenna=len(antennas) - 1)
    assert not (model.snapshot().state == Reason.FAILED).any()

    # the same names as [[events]] targets take down the same slots
    event = (f'\n[[events]]\nkind = "fail"\ntarget = "gs-london"\nantenna = {len(antennas) - 1}\nat_s = 0\n'
             f'[[events]]\nkind = "fail"\ntarget = ["{hop[0]}", "{hop[1]}"]\nat_s = 0\n')
    planned = plan_only(parse_scenario(TEXT + event, "<test>")).timeline
    scheduled = np.flatnonzero(planned.state[:, 0] == Reason.SCHEDULED)
    model.fail(hop)
    model.fail("gs-london", antenna=len(antennas) - 1)
    assert list(np.flatnonzero(model.snapshot().state == Reason.FAILED)) == list(scheduled)

    with pytest.raises(ConfigError, match="antenna.*gateway or terminal.*sat"):
        model.fail(hop[0], antenna=0)
    with pytest.raises(ConfigError, match=f"has {len(antennas)} antenna"):
        model.fail("gs-london", antenna=len(antennas))
    with pytest.raises(ConfigError, match="integer"):
        model.fail("gs-london", antenna="0")
