"""Placement of nodes on hosts (emulator.cluster.placement) against hand-built cases, brute force and
networkx's cut sizes, counted independently of the product's own count."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import networkx as nx
import numpy as np
import pytest

from emulator.cluster.placement import cross_host_links, describe, link_pairs, place
from tests.handmade import GSL_B, grid_timeline, sat_index
from topologies.errors import ConfigError
from topologies.timeline import LINK_CLASSES, LINK_ROLES, Node, Timeline


def static_timeline(nodes: list[Node], edges: list[tuple[int, int]], n_steps: int = 2) -> Timeline:
    """A timeline whose link slots are ``edges`` (near, far), up at every step."""
    a = np.array([e[0] for e in edges], np.int32)
    b = np.array([e[1] for e in edges], np.int32)
    n_links = len(edges)
    return Timeline(
        start=datetime(2024, 1, 1, tzinfo=UTC), step_s=1.0, nodes=nodes, link_a=a,
        link_class=np.full(n_links, LINK_CLASSES.index("isl"), np.uint8),
        link_role=np.full(n_links, LINK_ROLES.index("intra"), np.uint8),
        state=np.zeros((n_links, n_steps), np.uint8),
        peer=np.repeat(b[:, None], n_steps, axis=1),
        delay_ms=np.ones((n_links, n_steps), np.float32),
        rate_mbps=np.full((n_links, n_steps), 100.0, np.float32),
        loss_pct=np.zeros((n_links, n_steps), np.float32),
        sat_lla=np.zeros((sum(nd.kind == "sat" for nd in nodes), n_steps, 3), np.float32))


def torus(planes: int, per_plane: int) -> Timeline:
    """A +Grid of ``planes`` x ``per_plane`` satellites wrapping both ways (intra- then inter-plane slots)."""
    nodes = [Node(f"sat-{p}-{s}", "sat", {"shell": 0, "plane": p, "slot": s})
             for p in range(planes) for s in range(per_plane)]
    idx = lambda p, s: (p % planes) * per_plane + s % per_plane  # noqa: E731
    edges = [(idx(p, s), idx(p, s + 1)) for p in range(planes) for s in range(per_plane)]
    edges += [(idx(p, s), idx(p + 1, s)) for p in range(planes) for s in range(per_plane)]
    return static_timeline(nodes, edges)


def nx_crossing(tl: Timeline, host_of: np.ndarray) -> int:
    """Slots across hosts of a timeline whose slots never change peer: networkx's cut of each host's nodes
    in a multigraph with one edge per slot, each crossing edge seen from both of its hosts."""
    g = nx.MultiGraph()
    g.add_nodes_from(range(len(tl.nodes)))
    g.add_edges_from(zip(tl.link_a.tolist(), tl.peer[:, 0].tolist()))
    cuts = sum(nx.cut_size(g, set(np.flatnonzero(host_of == h).tolist()))
               for h in range(int(host_of.max()) + 1))
    assert cuts % 2 == 0
    return cuts // 2


def test_plane_keeps_planes_whole_and_balanced_on_a_torus():
    tl = torus(10, 10)
    p = place(tl, 3, "plane")
    planes = np.array([nd.info["plane"] for nd in tl.nodes])
    for pl in range(10):
        assert len(set(p.host_of[planes == pl].tolist())) == 1, f"plane {pl} split"
    # contiguous runs: the host never goes back down along the plane order
    first = p.host_of[np.arange(10) * 10]
    assert (np.diff(first) >= 0).all() and sorted(set(first.tolist())) == [0, 1, 2]
    assert p.nodes_per_host.max() - p.nodes_per_host.min() <= 10  # within one plane
    # 3 boundaries (with the wrap-around) of 10 inter-plane lasers each
    c = cross_host_links(tl, p.host_of)
    assert c.total == 30 == nx_crossing(tl, p.host_of)
    assert c.max_at_once == 30


def test_grid_timeline_by_hand():
    tl = grid_timeline()
    p = place(tl, 2, "plane")
    names = [nd.name for nd in tl.nodes]
    host = dict(zip(names, p.host_of.tolist()))
    assert [host[f"sat-{pl}-0"] for pl in range(4)] == [0, 0, 1, 1]
    # gw-a's antenna is on sat-0-0 or sat-0-1 (plane 0), gw-b's on sat-2-2 / sat-2-3 (plane 2)
    assert host["gw-a"] == host["h-a"] == 0 and host["gw-b"] == host["h-b"] == 1
    assert host["c-1"] == host["sat-1-2"] == 0
    c = cross_host_links(tl, p.host_of)
    # the inter-plane lasers plane 1 -> 2 and plane 3 -> 0: 4 each; nothing else crosses
    assert c.total == 8 and c.per_step.tolist() == [8] * 5
    p4 = place(tl, 4, "plane")
    assert cross_host_links(tl, p4.host_of).total == 16  # every inter-plane laser


def test_a_handover_across_hosts_counts_its_slot_once():
    tl = grid_timeline()
    tl.peer[GSL_B, 1:4] = sat_index(0, 3)  # gw-b: sat-2-2 at steps 0 and 4, sat-0-3 at steps 1-3
    p = place(tl, 2, "plane")
    gw_b = tl.node_index("gw-b")
    assert p.host_of[gw_b] == p.host_of[sat_index(0, 3)] == 0  # 3 steps against 2
    assert p.host_of[tl.node_index("h-b")] == 0
    c = cross_host_links(tl, p.host_of)
    assert c.total == 9 and GSL_B in c.slots.tolist()
    assert c.per_step.tolist() == [9, 8, 8, 8, 9]


def test_ground_balance_spreads_the_nodes_outside_planes():
    tl = grid_timeline()
    p = place(tl, 2, "plane", ground="balance")
    assert p.nodes_per_host.tolist() in ([11, 10], [10, 11])


def test_partition_finds_the_one_edge_between_two_cliques():
    nodes = [Node(f"n{i}", "sat", {}) for i in range(10)]
    edges = [(i, j) for i, j in itertools.combinations(range(5), 2)]
    edges += [(i, j) for i, j in itertools.combinations(range(5, 10), 2)] + [(4, 5)]
    tl = static_timeline(nodes, edges)
    p = place(tl, 2, "partition")
    # brute force over every balanced bisection, cut by networkx
    g = nx.Graph(edges)
    best = min(nx.cut_size(g, set(s)) for s in itertools.combinations(range(10), 5))
    assert best == 1
    assert cross_host_links(tl, p.host_of).total == nx_crossing(tl, p.host_of) == best
    assert p.nodes_per_host.tolist() == [5, 5]


def test_partition_on_a_torus_matches_the_optimal_bisection():
    tl = torus(4, 4)
    p = place(tl, 2, "partition", seed=1)
    g = nx.MultiGraph()
    g.add_edges_from(zip(tl.link_a.tolist(), tl.peer[:, 0].tolist()))
    best = min(nx.cut_size(g, set(s)) for s in itertools.combinations(range(16), 8))
    assert best == 8
    assert p.nodes_per_host.tolist() == [8, 8]
    assert cross_host_links(tl, p.host_of).total == nx_crossing(tl, p.host_of) == best
    # the same seed, the same placement
    assert np.array_equal(place(tl, 2, "partition", seed=1).host_of, p.host_of)


def test_partition_weighs_links_by_the_steps_they_exist():
    # a 4-cycle where two opposite slots exist at one step only: METIS cuts those two, not the others
    nodes = [Node(f"n{i}", "sat", {}) for i in range(4)]
    tl = static_timeline(nodes, [(0, 1), (1, 2), (2, 3), (3, 0)], n_steps=10)
    tl.peer[1, 1:] = -1  # 1 - 2: step 0 only
    tl.peer[3, 1:] = -1  # 3 - 0: step 0 only
    u, v, w = link_pairs(tl)
    assert list(zip(u.tolist(), v.tolist(), w.tolist())) == [(0, 1, 10), (0, 3, 1), (1, 2, 1), (2, 3, 10)]
    p = place(tl, 2, "partition")
    assert p.host_of[0] == p.host_of[1] != p.host_of[2] == p.host_of[3]
    c = cross_host_links(tl, p.host_of)
    assert c.slots.tolist() == [1, 3] and c.per_step.tolist() == [2] + [0] * 9


def test_one_host_crosses_nothing_and_describe_prints_each_strategy():
    tl = grid_timeline()
    for s in ("plane", "partition"):
        assert cross_host_links(tl, place(tl, 1, s).host_of).total == 0
    lines = describe(tl, 2)
    assert lines[0].startswith("plane on 2 hosts: nodes per host ") and " 8 of 37 link slots" in lines[0]
    assert lines[1].startswith("partition on 2 hosts: ")


@pytest.mark.parametrize("kwargs, what", [({"n_hosts": 0}, "hosts"), ({"n_hosts": True}, "hosts"),
                                          ({"n_hosts": 2, "strategy": "metis"}, "placement"),
                                          ({"n_hosts": 2, "ground": "near"}, "ground")])
def test_bad_arguments_are_one_line_config_errors(kwargs, what):
    with pytest.raises(ConfigError) as e:
        place(grid_timeline(), **kwargs)
    assert f"key '{what}'" in str(e.value) and "\n" not in str(e.value)


SMALL = """
name = "small"
[time]
start = "2023-07-18T12:00:00Z"
duration_s = 5
step_s = 1.0
[[constellation.shells]]
name = "s"
pattern = "delta"
altitude_km = 550
inclination_deg = 53
planes = 10
sats_per_plane = 10
phasing = 1
"""


def test_plan_prints_the_cross_host_links_of_each_strategy(tmp_path, capsys):
    from emulator.cli import main

    sc = tmp_path / "small.toml"
    sc.write_text(SMALL)
    assert main(["plan", str(sc), "--hosts", "3", "--json"]) == 0
    import json

    got = {p["strategy"]: p for p in json.loads(capsys.readouterr().out)["placement"]}
    plane = got["plane"]
    # 10 planes of 10 (no ground nodes) in 3 contiguous runs, cut nearest 1/3 and 2/3 of the satellites: 3, 4
    # and 3 planes; the lasers between runs and the wrap-around from plane 9 to plane 0 cross: 3 x 10
    assert plane["nodes_per_host"] == [30, 40, 30] and plane["hosts"] == 3
    assert plane["cross_host_slots"] == 30 and plane["link_slots"] == 200
    assert got["partition"]["cross_host_slots"] >= 1
    assert main(["plan", str(sc), "--hosts", "3"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("placement")]
    assert len(lines) == 2 and "plane on 3 hosts" in lines[0] and "partition on 3 hosts" in lines[1]
    assert main(["plan", str(sc), "--hosts", "0"]) == 2
    err = capsys.readouterr().err
    assert "key 'hosts'" in err and "Traceback" not in err
