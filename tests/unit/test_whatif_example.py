"""examples/what-if.toml is what issue 16 and the README say it is: an ISL cut on the path all its probe
flows take, a gateway failure and a regional outage, under a gravity-model load. Checked on its own
timeline: paths with networkx from the arrays, distances with a haversine written here (~2 s)."""

from __future__ import annotations

import math
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from topologies.plan import plan_scenario
from topologies.scenario import load_scenario
from topologies.timeline import LINK_CLASSES, Reason

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "what-if.toml"
_GROUND = [LINK_CLASSES.index("gsl")]


@pytest.fixture(scope="module")
def planned():
    sc = load_scenario(EXAMPLE)
    return sc, plan_scenario(sc)


def least_delay_hops(tl, step: int, src: str, dst: str) -> set[frozenset[int]]:
    g = nx.Graph()
    for l in range(tl.n_links):
        a, b = int(tl.link_a[l]), int(tl.peer[l, step])
        if tl.state[l, step] == 0 and b >= 0 and (not g.has_edge(a, b) or g[a][b]["w"] > tl.delay_ms[l, step]):
            g.add_edge(a, b, w=float(tl.delay_ms[l, step]))
    p = nx.shortest_path(g, tl.node_index(src), tl.node_index(dst), weight="w")
    return {frozenset(e) for e in zip(p, p[1:])}


def haversine_km(lat1, lon1, lat2, lon2, r_km=6371.0088):
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r_km * math.asin(math.sqrt(h))


def ground_slots(tl, site: int) -> np.ndarray:
    return np.flatnonzero((tl.link_a == site) & np.isin(tl.link_class, _GROUND))


def test_the_isl_cut_is_on_every_probe_flows_path_when_it_comes(planned):
    sc, tl = planned
    [cut] = [e for e in sc.events if isinstance(e.target, (tuple, list))]
    a, b = (tl.node_index(n) for n in cut.target)
    at = int(round(cut.at_s / tl.step_s))
    probes = [(f.src, f.dst) for f in sc.traffic if f.kind in ("ping", "udp-probe")]
    assert len(probes) == 4
    for src, dst in probes:  # the step before the cut: it carries every flow
        assert frozenset((a, b)) in least_delay_hops(tl, at - 1, src, dst), (src, dst)
        assert frozenset((a, b)) not in least_delay_hops(tl, at, src, dst), (src, dst)
    peer = tl.peer[:, at - 1]
    slot = np.flatnonzero(((tl.link_a == a) & (peer == b)) | ((tl.link_a == b) & (peer == a)))
    assert len(slot) == 1
    k = int(round(cut.duration_s / tl.step_s))
    assert np.all(tl.state[slot[0], at:at + k] == Reason.SCHEDULED)


def test_the_gateway_failure_takes_all_its_links_for_its_duration(planned):
    sc, tl = planned
    [gw] = [e for e in sc.events if e.kind == "fail" and isinstance(e.target, str)]
    g = tl.node_index(gw.target)
    assert tl.nodes[g].kind == "gateway"
    at, k = int(round(gw.at_s / tl.step_s)), int(round(gw.duration_s / tl.step_s))
    mine = (tl.link_a[:, None] == g) | (tl.peer == g)  # (n_links, n_steps): its antennas and its host's access link
    for step in range(at, at + k):
        assert mine[:, step].any() and np.all(tl.state[mine[:, step], step] != 0), step
    assert not np.any(tl.state[mine[:, at - 1], at - 1] == Reason.SCHEDULED)  # not before it
    assert np.any(tl.state[mine[:, at + k], at + k] == 0)  # back after it


def test_the_regional_outage_is_around_frankfurt_only(planned):
    sc, tl = planned
    [reg] = [e for e in sc.events if e.kind == "region-outage"]
    at = int(round(reg.at_s / tl.step_s))
    inside = []
    for i, n in enumerate(tl.nodes):
        if n.kind != "gateway":
            continue
        d = haversine_km(reg.lat_deg, reg.lon_deg, n.info["lat_deg"], n.info["lon_deg"])
        slots = ground_slots(tl, i)
        down = np.all(tl.state[slots, at] != 0)
        scheduled = np.any(tl.state[slots, at] == Reason.SCHEDULED)
        assert scheduled == (d <= reg.radius_km), (n.name, d)
        if d <= reg.radius_km:
            assert down
            inside.append(n.name)
    assert inside == ["gs-frankfurt"]  # London is ~640 km away, outside the 400 km


def test_the_load_is_a_gravity_matrix_over_the_hosts(planned):
    sc, _ = planned
    [m] = [f for f in sc.traffic if f.kind == "matrix"]
    assert m.aggregate_mbps > 0 and not m.matrix_csv  # gravity, not a CSV
