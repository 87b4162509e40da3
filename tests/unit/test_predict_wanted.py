"""predict() computes only what its pairs need (the protocol's table towards the pairs' ends, one Dijkstra tree
per end for the least-delay paths): its predictions equal the ones the test computes the long way, with the
protocol's full table and a path search per pair and step, for every built-in centralised protocol, with the
backhaul policy that reweights links, and for a plugin that overrides compute() of a built-in."""

from __future__ import annotations

import numpy as np
import pytest

from routing.base import get_protocol
from routing.graph import build_graph, path, path_delay_ms
from routing.paths import table_path
from routing.predict import predict
from routing.shortest_delay import ShortestDelay
from topologies.plan import plan_scenario
from topologies.scenario import parse_scenario

SCENARIO = """
name = "wanted"
seed = 3
[time]
start = "2023-07-18T12:00:00Z"
duration_s = 6
step_s = 1.0
[[constellation.shells]]
name = "s"
altitude_km = 550.0
inclination_deg = 53.0
planes = 16
sats_per_plane = 14
phasing = 1
[gsl]
antennas = 2
min_elevation_deg = 10.0
[ground]
pops = "starlink"
[[ground.sites]]
name = "gs-london"
lat_deg = 51.5074
lon_deg = -0.1278
[[ground.sites]]
name = "gs-new-york"
lat_deg = 40.7128
lon_deg = -74.0060
[[ground.sites]]
name = "gs-madrid"
lat_deg = 40.4168
lon_deg = -3.7038
[[terminals]]
name = "ut-boston"
lat_deg = 42.36
lon_deg = -71.06
pop = "lndngbr1"
[[compute]]
name = "dc-3-5"
satellite = "sat-3-5"
{backhaul}
"""


def timeline(backhaul: str = ""):
    return plan_scenario(parse_scenario(SCENARIO.format(backhaul=backhaul), "w.toml"))


def long_way(tl, proto, pairs):
    """Per step: the protocol's whole table and a path search per pair and direction (what predict did)."""
    out = {}
    for k in range(tl.n_steps):
        snap = tl.snapshot(k)
        graph = build_graph(tl.link_a, snap, len(tl.nodes))
        table = proto.compute(tl, k, snap)
        for a, b in pairs:
            for src, dst in ((a, b), (b, a)):
                nodes_best, links_best, w = path(graph, src, dst)
                best = path_delay_ms(snap, links_best) if np.isfinite(w) else np.nan
                nodes, links = table_path(table, src, dst)
                got = path_delay_ms(snap, links) if nodes else np.nan
                out[(k, src, dst)] = (got, best, nodes)
    return out


def pairs_of(tl):
    names = ["h-london", "h-new-york", "h-madrid", "ut-boston", "dc-3-5", "sat-0-0"]
    idx = [tl.node_index(n) for n in names]
    pop_host = next(i for i, nd in enumerate(tl.nodes) if nd.name == "h-pop-lndngbr1")
    return [(idx[0], idx[1]), (idx[1], idx[4]), (idx[3], pop_host), (idx[2], idx[5]), (idx[0], idx[2])]


class OverridesCompute(ShortestDelay):
    """A plugin deriving from a built-in and changing its table: predict must use this compute()."""

    name = "test-overrides-compute"

    def compute(self, timeline, step, snapshot=None):
        return get_protocol("min-hop").compute(timeline, step, snapshot)


@pytest.mark.parametrize("protocol,backhaul", [
    ("shortest-delay", ""), ("min-hop", ""), ("ecmp", ""), ("predictive", ""),
    ("shortest-delay", '[backhaul]\npolicy = "space-first"'), ("override", "")])
def test_predictions_equal_the_long_way(protocol, backhaul):
    tl = timeline(backhaul)
    proto = OverridesCompute() if protocol == "override" else get_protocol(protocol)
    pairs = pairs_of(tl)
    want = long_way(tl, proto, pairs)
    got = predict(tl, proto, pairs)
    reached = 0
    for (a, b), pred in got.items():
        for k in range(tl.n_steps):
            for src, dst, arr, best in ((a, b, pred.forward_ms, pred.best_forward_ms),
                                        (b, a, pred.reverse_ms, pred.best_reverse_ms)):
                w_arr, w_best, w_nodes = want[(k, src, dst)]
                assert np.isnan(arr[k]) == np.isnan(w_arr) and (np.isnan(w_arr) or arr[k] == pytest.approx(w_arr)), \
                    (protocol, k, src, dst, arr[k], w_arr)
                assert np.isnan(best[k]) == np.isnan(w_best) and (np.isnan(w_best) or best[k] == pytest.approx(w_best))
                reached += int(np.isfinite(w_arr))
                if src == a:
                    assert pred.forward_paths[k] == w_nodes
    assert reached >= len(pairs) * tl.n_steps  # most directions have a route: the comparison is not vacuous


def test_a_restricted_table_keeps_only_rows_equal_to_the_full_ones():
    tl = timeline()
    proto = get_protocol("shortest-delay")
    full = proto.compute(tl, 2)
    wanted = np.array([tl.node_index("h-london"), tl.node_index("dc-3-5"), tl.node_index("sat-0-0")])
    part = proto.compute_for(tl, 2, None, wanted)
    assert set(part.destinations.tolist()) == set(wanted.tolist()) & set(full.destinations.tolist())
    for r, d in enumerate(part.destinations.tolist()):
        f = int(np.flatnonzero(full.destinations == d)[0])
        assert np.array_equal(part.next_hop[r], full.next_hop[f]) and np.array_equal(part.link[r], full.link[f])
        assert np.array_equal(part.dist[r], full.dist[f])
