"""Connectivity per step against networkx on the same links, and plan's report of it."""

from datetime import UTC, datetime

import networkx as nx
import numpy as np

from topologies.connectivity import connectivity
from topologies.timeline import Node, Reason, Timeline


def random_timeline(n_nodes=30, n_links=40, n_steps=25, seed=3):
    rng = np.random.default_rng(seed)
    nodes = [Node(f"sat-0-{i}", "sat", {"shell": 0, "plane": 0, "slot": i}) for i in range(n_nodes)]
    link_a = rng.integers(0, n_nodes, n_links)
    peer = rng.integers(-1, n_nodes, size=(n_links, n_steps))
    state = rng.choice([int(Reason.UP), int(Reason.UP), int(Reason.RANGE)], size=(n_links, n_steps))
    f = np.float32
    return Timeline(start=datetime(2023, 7, 18, 12, tzinfo=UTC), step_s=1.0, nodes=nodes,
                    link_a=link_a.astype(np.int32), link_class=np.zeros(n_links, np.uint8),
                    link_role=np.zeros(n_links, np.uint8), state=state.astype(np.uint8),
                    peer=peer.astype(np.int32), delay_ms=np.ones((n_links, n_steps), f),
                    rate_mbps=np.full((n_links, n_steps), 100, f), loss_pct=np.zeros((n_links, n_steps), f),
                    sat_lla=np.zeros((n_nodes, n_steps, 3), f), scenario={"name": "t"})


def nx_graph(tl, k):
    g = nx.Graph()
    g.add_nodes_from(range(len(tl.nodes)))
    for l in range(tl.n_links):
        p = int(tl.peer[l, k])
        if tl.state[l, k] == Reason.UP and p >= 0:
            g.add_edge(int(tl.link_a[l]), p)
    return g


def test_components_and_pairs_equal_networkx():
    tl = random_timeline()
    pairs = [("sat-0-0", "sat-0-1"), ("sat-0-2", "sat-0-29"), ("sat-0-5", "sat-0-17")]
    c = connectivity(tl, pairs)
    want_joined = [0] * len(pairs)
    for k in range(tl.n_steps):
        g = nx_graph(tl, k)
        comps = list(nx.connected_components(g))
        assert c.components[k] == len(comps)
        assert c.largest[k] == max(len(x) for x in comps)
        assert c.isolated[k] == sum(len(x) == 1 for x in comps)
        for j, (s, d) in enumerate(pairs):
            want_joined[j] += nx.has_path(g, tl.node_index(s), tl.node_index(d))
    assert [p.connected_steps for p in c.pairs] == want_joined
    assert any(p.connected_steps < tl.n_steps for p in c.pairs)  # the case under test does split


def test_a_split_pair_is_a_warning_naming_both_components():
    tl = random_timeline()
    c = connectivity(tl, [("sat-0-2", "sat-0-29")])
    p = c.pairs[0]
    if p.connected_steps == tl.n_steps:  # pragma: no cover - the seed is chosen so that it splits
        raise AssertionError("expected a split")
    k = p.first_split["step"]
    g = nx_graph(tl, k)
    src_comp = nx.node_connected_component(g, tl.node_index("sat-0-2"))
    dst_comp = nx.node_connected_component(g, tl.node_index("sat-0-29"))
    assert p.first_split["src_size"] == len(src_comp)
    assert p.first_split["dst_size"] == len(dst_comp)
    assert tl.node_index(p.first_split["src_member"]) == min(src_comp)
    assert tl.node_index(p.first_split["dst_member"]) == min(dst_comp)
    w = p.warning()
    assert "sat-0-2" in w and "sat-0-29" in w and f"step {k}" in w
    # earlier steps were all joined
    assert all(nx.has_path(nx_graph(tl, j), tl.node_index("sat-0-2"), tl.node_index("sat-0-29"))
               for j in range(k))


def test_always_connected_pair_has_no_warning():
    tl = random_timeline()
    tl.state[:] = Reason.UP
    tl.link_a[:] = np.arange(tl.n_links) % len(tl.nodes)  # a ring: link i joins node i to node i + 1
    tl.peer[:] = ((np.arange(tl.n_links) + 1) % len(tl.nodes))[:, None]
    c = connectivity(tl, [("sat-0-0", "sat-0-15")])
    assert c.components.tolist() == [1] * tl.n_steps
    assert c.pairs[0].connected_fraction == 1.0 and c.pairs[0].warning() is None
