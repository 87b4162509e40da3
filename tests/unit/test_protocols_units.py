"""The built-in centralised protocols (min-hop, ecmp, predictive) against independent references
(networkx), their invariants (loop-free, column 0 = single path), the registry with a real entry
point, and the multipath netlink message decoded by pyroute2."""

from __future__ import annotations

import itertools
import struct
import textwrap

import networkx as nx
import numpy as np
import pytest
from handmade import GSL_A, GSL_B, OUTAGE_ISL, grid_timeline

import routing
from routing import base
from routing.base import RouteTable, available_protocols, destinations, get_protocol
from routing.ecmp import Ecmp
from routing.graph import HOP_EPSILON
from routing.paths import table_path
from routing.predictive import doomed_links
from topologies.errors import ConfigError

BUILTINS = ("shortest-delay", "min-hop", "ecmp", "predictive")


def up_graph(tl, step):
    """networkx graph of the up links at ``step``: edge attribute ``delay`` (ms), parallel links
    reduced to the fastest."""
    g = nx.Graph()
    g.add_nodes_from(range(len(tl.nodes)))
    for l in range(tl.n_links):
        if tl.state[l, step] == 0 and tl.peer[l, step] >= 0:
            u, v, d = int(tl.link_a[l]), int(tl.peer[l, step]), float(tl.delay_ms[l, step])
            if not g.has_edge(u, v) or g[u][v]["delay"] > d:
                g.add_edge(u, v, delay=d)
    return g


def path_delay(g, nodes):
    return sum(g[a][b]["delay"] for a, b in itertools.pairwise(nodes))


def every_path_reaches(table: RouteTable, n_nodes: int, rng: np.random.Generator, walks: int = 5) -> None:
    """Random walks over any of the next hops reach the destination within n_nodes hops."""
    nh = table.next_hops_wide()
    for i, d in enumerate(table.destinations.tolist()):
        for u in range(n_nodes):
            if nh[i, u, 0] < 0:
                continue
            for _ in range(walks):
                v, hops = u, 0
                while v != d:
                    choices = nh[i, v][nh[i, v] >= 0]
                    assert len(choices), f"dead end at {v} towards {d}"
                    v = int(rng.choice(choices))
                    hops += 1
                    assert hops <= n_nodes, f"loop from {u} towards {d}"


# ------------------------------------------------------------------------------------- min-hop
@pytest.mark.parametrize("step", range(5))
def test_min_hop_takes_fewest_hops_then_least_delay(step):
    tl = grid_timeline()
    table = get_protocol("min-hop").compute(tl, step)
    g = up_graph(tl, step)
    for i, d in enumerate(table.destinations.tolist()):
        hops = nx.single_source_shortest_path_length(g, d)
        for u in range(len(tl.nodes)):
            if u not in hops:
                assert table.next_hop[i, u] == -1 and not np.isfinite(table.dist[i, u])
                continue
            assert np.rint(table.dist[i, u]) == hops[u]
            if u == d:
                continue
            nodes, links = table_path(table, u, d)
            assert len(links) == hops[u]
            best = min(path_delay(g, p) for p in nx.all_shortest_paths(g, u, d))
            assert path_delay(g, nodes) == pytest.approx(best, abs=1e-4)


def test_min_hop_differs_from_shortest_delay_where_a_longer_path_is_faster():
    tl = grid_timeline()
    tl.delay_ms[OUTAGE_ISL, 0] = 50.0  # sat-1-0 -> sat-1-1 becomes very slow but stays one hop
    a, b = tl.node_index("sat-1-0"), tl.node_index("sat-1-1")
    mh = get_protocol("min-hop", all_loopbacks=True).compute(tl, 0)
    sd = get_protocol("shortest-delay", all_loopbacks=True).compute(tl, 0)
    assert table_path(mh, a, b)[1] == [OUTAGE_ISL]
    assert OUTAGE_ISL not in table_path(sd, a, b)[1]


# ------------------------------------------------------------------------------------- ecmp
@pytest.mark.parametrize("step", [0, 1, 2])
def test_ecmp_next_hops_are_all_neighbours_one_hop_closer(step):
    tl = grid_timeline()
    table = Ecmp(max_paths=8).compute(tl, step)
    g = up_graph(tl, step)
    assert table.width == 8
    assert np.array_equal(table.mp_next_hop[:, :, 0], table.next_hop)
    n_multi = 0
    for i, d in enumerate(table.destinations.tolist()):
        hops = nx.single_source_shortest_path_length(g, d)
        for u in range(len(tl.nodes)):
            got = table.mp_next_hop[i, u]
            got = sorted(got[got >= 0].tolist())
            want = sorted(v for v in g[u] if u in hops and hops.get(v) == hops[u] - 1) if u != d else []
            assert got == want, (u, d)
            n_multi += len(got) > 1
            # the links join u to those next hops
            for v, l in zip(table.mp_next_hop[i, u], table.mp_link[i, u]):
                if v >= 0:
                    assert {int(tl.link_a[l]), int(tl.peer[l, step])} == {u, int(v)}
                else:
                    assert l == -1
    assert n_multi > 50  # a 4x4 torus is full of equal-hop paths
    every_path_reaches(table, len(tl.nodes), np.random.default_rng(step))


def test_ecmp_keeps_at_most_k_next_hops_and_pads_at_the_end():
    tl = grid_timeline()
    wide = Ecmp(max_paths=8).compute(tl, 0)
    two = Ecmp(max_paths=2).compute(tl, 0)
    n_wide = (wide.mp_next_hop >= 0).sum(axis=2)
    n_two = (two.mp_next_hop >= 0).sum(axis=2)
    assert np.array_equal(n_two, np.minimum(n_wide, 2))
    assert (n_wide > 2).any()
    # padding only at the end of a row
    valid = two.mp_next_hop >= 0
    assert not (valid[:, :, 1] & ~valid[:, :, 0]).any()


def test_ecmp_delay_tolerance_admits_paths_within_the_tolerance_only():
    tl = grid_timeline()
    step = 0
    g = up_graph(tl, step)
    for u, v in g.edges:  # the graph layer adds HOP_EPSILON per hop (a 0 ms access link still costs)
        g[u][v]["delay"] += HOP_EPSILON
    counts = []
    for tol in (0.0, 0.05, 0.5):
        table = Ecmp(metric="delay", tolerance_ms=tol, max_paths=8).compute(tl, step)
        for i, d in enumerate(table.destinations.tolist()):
            dist = nx.single_source_dijkstra_path_length(g, d, weight="delay")
            for u in range(len(tl.nodes)):
                if u == d:
                    continue
                got = table.mp_next_hop[i, u]
                got = sorted(got[got >= 0].tolist())
                want = sorted(v for v in g[u] if dist[v] < dist[u]
                              and g[u][v]["delay"] + dist[v] <= dist[u] + tol + 1e-3)
                assert got == want, (tol, u, d)
        every_path_reaches(table, len(tl.nodes), np.random.default_rng(1), walks=2)
        counts.append(int((table.mp_next_hop >= 0).sum()))
    assert counts[0] < counts[1] < counts[2]  # a wider tolerance admits more next hops


def test_ecmp_options_are_checked():
    with pytest.raises(ConfigError, match="max_paths"):
        Ecmp(max_paths=0)
    with pytest.raises(ConfigError, match="metric"):
        Ecmp(metric="bandwidth")
    with pytest.raises(ConfigError, match="tolerance_ms"):
        Ecmp(tolerance_ms=1.0)  # hop metric
    with pytest.raises(ConfigError, match="tolerance_ms"):
        Ecmp(metric="delay", tolerance_ms=-1)


def test_route_table_checks_its_multipath_arrays():
    tl = grid_timeline()
    t = Ecmp().compute(tl, 0)
    bad = t.mp_next_hop.copy()
    bad[:, :, 0] = -1
    with pytest.raises(ValueError, match="must equal"):
        RouteTable(0, t.destinations, t.next_hop, t.link, t.dist, bad, t.mp_link)
    with pytest.raises(ValueError, match="both or neither"):
        RouteTable(0, t.destinations, t.next_hop, t.link, t.dist, t.mp_next_hop, None)
    single = get_protocol("shortest-delay").compute(tl, 0)
    assert single.width == 1 and single.links_wide().shape == single.link.shape + (1,)
    r = tl.node_index("sat-0-0")
    assert {d: hops[0] for d, hops in t.multipath_of(r).items()} == t.routes_of(r)


# ------------------------------------------------------------------------------------- predictive
def test_doomed_links_are_the_ones_that_change_next():
    tl = grid_timeline()
    assert set(np.flatnonzero(doomed_links(tl, 0, tl.snapshot(0)))) == {OUTAGE_ISL, GSL_B}
    # at step 1 the ISL is already down (not doomed); gw-a's antenna loses its satellite at step 2
    assert set(np.flatnonzero(doomed_links(tl, 1, tl.snapshot(1)))) == {GSL_A}
    assert set(np.flatnonzero(doomed_links(tl, 0, tl.snapshot(0), horizon_steps=2))) == {OUTAGE_ISL, GSL_B, GSL_A}
    assert not doomed_links(tl, tl.n_steps - 1, tl.snapshot(tl.n_steps - 1)).any()


def test_predictive_avoids_links_about_to_change_where_it_can():
    tl = grid_timeline()
    sd = get_protocol("shortest-delay", all_loopbacks=True).compute(tl, 0)
    pr = get_protocol("predictive", all_loopbacks=True).compute(tl, 0)
    assert (sd.link == OUTAGE_ISL).any()  # shortest-delay uses the ISL that fails at step 1 ...
    assert not (pr.link == OUTAGE_ISL).any()  # ... predictive has moved off it already
    # gw-b's only antenna hands over at step 1: there is no other way to h-b, so it is still used
    ib, gb = tl.node_index("h-b"), tl.node_index("gw-b")
    for u in range(len(tl.nodes)):
        if u not in (ib, gb):
            _, links = table_path(pr, u, ib)
            assert GSL_B in links, u
    every_path_reaches(pr, len(tl.nodes), np.random.default_rng(0), walks=1)
    # at the last step nothing is known beyond: same as shortest-delay
    last = tl.n_steps - 1
    a = get_protocol("predictive").compute(tl, last)
    b = get_protocol("shortest-delay").compute(tl, last)
    assert np.array_equal(a.next_hop, b.next_hop) and np.array_equal(a.link, b.link)


def test_predictive_options_are_checked():
    with pytest.raises(ConfigError, match="horizon_steps"):
        get_protocol("predictive", horizon_steps=0)
    with pytest.raises(ConfigError, match="metric"):
        get_protocol("predictive", metric="x")


# ------------------------------------------------------------------------------------- registry
def test_builtins_are_listed_with_origin_and_description():
    listed = {name: (origin, desc) for name, origin, desc in available_protocols()}
    for name in BUILTINS:
        origin, desc = listed[name]
        assert origin.startswith("built-in (routing.")
        assert desc and "\n" not in desc
    with pytest.raises(ConfigError) as e:
        get_protocol("ospf-magic")
    for name in BUILTINS:
        assert name in str(e.value)
    assert set(BUILTINS) <= set(routing.base.PROTOCOLS)


@pytest.fixture
def isolated_registry(monkeypatch, tmp_path):
    """A fresh registry and a directory on sys.path where a test can put a distribution."""
    monkeypatch.setattr(base, "PROTOCOLS", dict(base.PROTOCOLS))
    monkeypatch.setattr(base, "_BROKEN", {})
    monkeypatch.setattr(base, "_ORIGIN", {})
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    importlib.invalidate_caches()
    return tmp_path


def write_distribution(where, dist: str, entry_points: dict[str, str], module: str, code: str) -> None:
    info = where / f"{dist}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    eps = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{base.ENTRY_POINT_GROUP}]\n{eps}")
    (where / f"{module}.py").write_text(textwrap.dedent(code))


def test_entry_point_plugin_is_found_listed_and_usable(isolated_registry):
    write_distribution(isolated_registry, "satnetem_testplug", {
        "test-reverse": "satnetem_testplug_mod:Reverse",
        "test-broken": "satnetem_testplug_mod:DoesNotExist",
    }, "satnetem_testplug_mod", '''
        from routing.base import RoutingProtocol
        from routing.shortest_delay import ShortestDelay

        class Reverse(ShortestDelay):
            """Shortest delay, under another name (a test plugin)."""
            name = "test-reverse"
    ''')
    proto = get_protocol("test-reverse")
    assert type(proto).__name__ == "Reverse"
    assert proto.compute(grid_timeline(), 0).next_hop.shape[1] == len(grid_timeline().nodes)
    listed = {name: (origin, desc) for name, origin, desc in available_protocols()}
    assert listed["test-reverse"] == ("entry point satnetem_testplug_mod:Reverse (satnetem_testplug 0.3)",
                                      "Shortest delay, under another name (a test plugin).")
    assert listed["test-broken"][1].startswith("cannot be loaded: AttributeError")
    with pytest.raises(ConfigError, match="test-broken.*cannot be loaded"):
        get_protocol("test-broken")
    with pytest.raises(ConfigError, match="test-reverse"):  # the unknown-name error lists plugins too
        get_protocol("nope")


def test_every_builtin_gives_consistent_tables_on_every_step():
    tl = grid_timeline()
    dest = destinations(tl)
    for name in BUILTINS:
        proto = get_protocol(name)
        for k in range(tl.n_steps):
            t = proto.compute(tl, k)
            assert t.step == k and np.array_equal(t.destinations, dest)
            snap = tl.snapshot(k)
            used = t.links_wide()[t.links_wide() >= 0]
            assert snap.up[used].all(), (name, k)  # only up links carry routes
            for d in dest.tolist():
                for u in range(len(tl.nodes)):
                    table_path(t, u, d)  # raises if the table loops


# ------------------------------------------------------------------------------------- netlink
def test_multipath_route_message_decodes_with_pyroute2():
    rtmsg = pytest.importorskip("pyroute2.netlink.rtnl.rtmsg").rtmsg
    from emulator import rtnl

    body = rtnl.multipath_route_body(0x0A800100, 24, [(0x0A000001, 5), (0x0A000003, 7), (0x0A000011, 9)],
                                     0x0A400001)
    msg = rtmsg(struct.pack("=IHHII", 16 + len(body), rtnl.RTM_NEWROUTE, 0, 1, 0) + body)
    msg.decode()
    assert (msg.get_attr("RTA_DST"), msg["dst_len"], msg.get_attr("RTA_PREFSRC")) == ("10.128.1.0", 24, "10.64.0.1")
    assert msg["table"] == 254 and msg["proto"] == rtnl.RTPROT_STATIC
    assert [(h["oif"], h.get_attr("RTA_GATEWAY"), h["hops"]) for h in msg.get_attr("RTA_MULTIPATH")] == [
        (5, "10.0.0.1", 0), (7, "10.0.0.3", 0), (9, "10.0.0.17", 0)]
