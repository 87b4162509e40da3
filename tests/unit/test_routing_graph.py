"""Shortest paths and next hops against networkx, on a hand-made timeline."""

from __future__ import annotations

import subprocess
import sys

import networkx as nx
import numpy as np
import pytest
from handmade import GSL_A, OUTAGE_ISL, grid_timeline

from routing import graph as graph_mod
from routing.base import destinations, get_protocol
from routing.graph import HOP_EPSILON, build_graph, next_hops, path, path_delay_ms
from topologies.errors import ConfigError


@pytest.fixture(params=["c", "scipy"])
def backend(request, monkeypatch):
    """Each shortest-path test runs on the C trees (routing/dijkstra.c, built by install.sh) and on scipy's."""
    monkeypatch.setenv("SATNETEM_DIJKSTRA", "" if request.param == "c" else "scipy")
    monkeypatch.setattr(graph_mod, "_c_trees", [])
    if request.param == "c":
        assert graph_mod._c_dijkstra() is not None, f"{graph_mod.DIJKSTRA_LIBRARY} not built: run ./install.sh"
    yield request.param
    monkeypatch.setattr(graph_mod, "_c_trees", [])


def reference(tl, step):
    g = nx.Graph()
    g.add_nodes_from(range(len(tl.nodes)))
    for l in range(tl.n_links):
        if tl.state[l, step] == 0 and tl.peer[l, step] >= 0:
            g.add_edge(int(tl.link_a[l]), int(tl.peer[l, step]), weight=float(tl.delay_ms[l, step]) + HOP_EPSILON)
    return g


@pytest.mark.parametrize("step", range(5))
def test_distances_and_next_hops_match_networkx(step, backend):
    tl = grid_timeline()
    snap = tl.snapshot(step)
    graph = build_graph(tl.link_a, snap, len(tl.nodes))
    dest = destinations(tl)
    dist, nh, link = next_hops(graph, dest)
    g = reference(tl, step)
    for i, d in enumerate(dest):
        ref = nx.single_source_dijkstra_path_length(g, int(d))
        for v in range(len(tl.nodes)):
            if v in ref:
                assert dist[i, v] == pytest.approx(ref[v], abs=1e-4)
                if v != d:  # the next hop lies on a shortest path and its link joins the two
                    w = int(nh[i, v])
                    assert dist[i, v] == pytest.approx(g[v][w]["weight"] + dist[i, w], abs=1e-4)
                    l = int(link[i, v])
                    assert {int(tl.link_a[l]), int(snap.peer[l])} == {v, w} and snap.up[l]
            else:
                assert not np.isfinite(dist[i, v]) and nh[i, v] == -1 and link[i, v] == -1


def test_down_links_are_avoided_and_unreachable_is_minus_one():
    tl = grid_timeline()
    table = get_protocol("shortest-delay").compute(tl, 1)
    assert not (table.link == OUTAGE_ISL).any()
    table2 = get_protocol("shortest-delay").compute(tl, 2)  # gw-a has no satellite: h-a is cut off
    row = list(table2.destinations).index(tl.node_index("h-a"))
    assert table2.next_hop[row, tl.node_index("sat-3-3")] == -1
    assert tl.node_index("h-a") not in table2.routes_of(tl.node_index("sat-0-0"))


def test_path_delay_and_parallel_links():
    tl = grid_timeline()
    snap = tl.snapshot(0)
    ia, ib = tl.node_index("h-a"), tl.node_index("h-b")
    nodes, links, w = path(build_graph(tl.link_a, snap, len(tl.nodes)), ia, ib)
    assert nodes[0] == ia and nodes[-1] == ib and len(links) == len(nodes) - 1
    assert w == pytest.approx(path_delay_ms(snap, links) + HOP_EPSILON * len(links))
    # a second, slower antenna of gw-a on the same satellite is never chosen
    params = snap.params.copy()
    peer = np.append(snap.peer, snap.peer[GSL_A])
    from topologies.timeline import Snapshot
    snap2 = Snapshot(0, np.append(snap.state, 0), peer, np.vstack([params, params[GSL_A] + [5, 0, 0]]))
    g2 = build_graph(np.append(tl.link_a, tl.link_a[GSL_A]), snap2, len(tl.nodes))
    assert path(g2, ia, ib)[1] == links


def test_unknown_protocol_lists_known_ones():
    with pytest.raises(ConfigError, match="shortest-delay"):
        get_protocol("ospf-magic")
    with pytest.raises(ConfigError, match="unknown routing metric"):
        build_graph(np.zeros(0), grid_timeline().snapshot(0), 1, metric="bandwidth")


def test_routing_imports_without_pyroute2_or_mininet():
    code = ("import sys, routing.base, routing.graph, routing.shortest_delay; "
            "bad = [m for m in ('pyroute2', 'mininet') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_leaf_destinations_match_networkx_on_random_graphs(backend):
    # next_hops reaches a one-neighbour destination through its neighbour's tree: check it where leaves
    # share a neighbour, a leaf's neighbour is itself a destination, two nodes are joined only to each
    # other, and a leaf hangs off an unreachable island
    from topologies.timeline import Snapshot

    rng = np.random.default_rng(7)
    for _ in range(20):
        n_core, n_leaf = 25, 12
        n = n_core + n_leaf + 2
        core_a = rng.integers(0, n_core, 60)
        core_b = rng.integers(0, n_core, 60)
        keep = core_a != core_b
        leaf_nb = rng.integers(0, n_core, n_leaf)
        a = np.concatenate([core_a[keep], np.arange(n_core, n_core + n_leaf), [n - 2]])
        b = np.concatenate([core_b[keep], leaf_nb, [n - 1]])
        w = rng.uniform(0.5, 9.0, len(a))
        snap = Snapshot(0, np.zeros(len(a), np.uint8), b.astype(np.int32),
                        np.stack([w, np.full(len(a), 100.0), np.zeros(len(a))], axis=1).astype(np.float32))
        graph = build_graph(a, snap, n)
        dest = np.unique(np.concatenate([np.arange(n_core, n_core + n_leaf), leaf_nb[:3], [n - 2, n - 1],
                                         rng.integers(0, n_core, 3)]))
        dist, nh, link = next_hops(graph, dest)
        g = nx.Graph()
        g.add_nodes_from(range(n))
        for l in range(len(a)):
            u, v, wt = int(a[l]), int(b[l]), float(snap.params[l, 0]) + HOP_EPSILON
            if not g.has_edge(u, v) or g[u][v]["weight"] > wt:
                g.add_edge(u, v, weight=wt)
        for i, d in enumerate(dest):
            ref = nx.single_source_dijkstra_path_length(g, int(d))
            for v in range(n):
                if v not in ref:
                    assert not np.isfinite(dist[i, v]) and nh[i, v] == -1 and link[i, v] == -1
                    continue
                assert dist[i, v] == pytest.approx(ref[v], abs=1e-6)
                if v == d:
                    assert nh[i, v] == -1
                    continue
                x = int(nh[i, v])
                assert dist[i, v] == pytest.approx(g[v][x]["weight"] + dist[i, x], abs=1e-6)
                l = int(link[i, v])
                assert {int(a[l]), int(b[l])} == {v, x}


def random_snapshot(rng, n, m):
    """A random multigraph snapshot: m link slots among n nodes, some down, some parallel, one isolated pair."""
    from topologies.timeline import Snapshot

    a = rng.integers(0, n - 2, m)
    b = rng.integers(0, n - 2, m)
    keep = a != b
    a, b = np.concatenate([a[keep], a[:5], [n - 2]]), np.concatenate([b[keep], b[:5], [n - 1]])  # 5 parallel
    w = rng.choice([1.0, 2.0, 2.5, 4.0], len(a)) if rng.random() < 0.5 else rng.uniform(0.1, 20.0, len(a))
    state = (rng.random(len(a)) < 0.1).astype(np.uint8)  # 10 % down
    params = np.stack([w, np.full(len(a), 100.0), np.zeros(len(a))], axis=1).astype(np.float32)
    return a, Snapshot(0, state, b.astype(np.int32), params)


@pytest.mark.parametrize("threads", ["1", "3"])
def test_c_trees_equal_scipy_trees(monkeypatch, threads):
    # The C trees against scipy's Dijkstra on the same graphs: equal distances everywhere, and each next hop
    # on a shortest path by scipy's distances, over the link slot the graph keeps between the two nodes
    monkeypatch.setenv("SATNETEM_ROUTE_THREADS", threads)
    rng = np.random.default_rng(11)
    for _ in range(12):
        n = int(rng.integers(30, 400))
        a, snap = random_snapshot(rng, n, int(rng.integers(n, 4 * n)))
        graph = build_graph(a, snap, n)
        sources = np.unique(rng.integers(0, n, 25))
        monkeypatch.setattr(graph_mod, "_c_trees", [])
        monkeypatch.setenv("SATNETEM_DIJKSTRA", "")
        assert graph_mod._c_dijkstra() is not None, f"{graph_mod.DIJKSTRA_LIBRARY} not built: run ./install.sh"
        dist, nh, link = graph_mod.trees(graph, sources)
        monkeypatch.setattr(graph_mod, "_c_trees", [])
        monkeypatch.setenv("SATNETEM_DIJKSTRA", "scipy")
        ref_dist, _, _ = graph_mod.trees(graph, sources)
        assert np.array_equal(np.isfinite(dist), np.isfinite(ref_dist))
        fin = np.isfinite(ref_dist)
        assert np.allclose(dist[fin], ref_dist[fin], rtol=0, atol=1e-9)
        rows, nodes = np.nonzero(fin & (nh >= 0))
        hop = nh[rows, nodes]
        w = graph.matrix()[nodes, hop].A1  # the edge node -> next hop
        assert np.allclose(dist[rows, nodes], w + ref_dist[rows, hop], rtol=0, atol=1e-9)
        assert np.array_equal(link[rows, nodes], graph.link_between(nodes, hop))
        # -1 exactly at the sources and where unreachable
        assert np.array_equal(nh < 0, ~fin | (np.arange(n)[None, :] == sources[:, None]))
        assert np.array_equal(link < 0, nh < 0)
    monkeypatch.setattr(graph_mod, "_c_trees", [])


def test_route_threads_setting(monkeypatch):
    monkeypatch.setenv("SATNETEM_ROUTE_THREADS", "2")
    assert graph_mod.route_threads() == 2
    for bad in ("0", "two", "65"):
        monkeypatch.setenv("SATNETEM_ROUTE_THREADS", bad)
        with pytest.raises(ConfigError, match="SATNETEM_ROUTE_THREADS"):
            graph_mod.route_threads()
