"""Access delay on the radio links and the space-first / ground-first backhaul policy (issue 11), checked
against what the test computes itself: the same plan without access delay shifted by the configured terms,
networkx on the planned links with one link class weighted at a time, and fibre delays from a haversine."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest

from emulator.cli import plan_summary
from routing.base import get_protocol
from routing.paths import table_path
from topologies.errors import ConfigError
from topologies.plan import plan_scenario
from topologies.scenario import parse_scenario
from topologies.timeline import LINK_CLASSES, Timeline

C_KM_S = 299_792.458
R_KM = 6371.0088
ISL, GSL, FIBRE = (LINK_CLASSES.index(c) for c in ("isl", "gsl", "fibre"))

BASE = """
name = "access"
seed = 5
[time]
start = "2023-07-18T12:00:00Z"
duration_s = 8
step_s = 1.0
[constellation]
[[constellation.shells]]
name = "s"
altitude_km = 550.0
inclination_deg = 53.0
planes = 24
sats_per_plane = 20
phasing = 1
[gsl]
antennas = 2
min_elevation_deg = 10.0
{gsl}
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
[terminal]
min_elevation_deg = 10.0
gso_exclusion_deg = 0.0
{terminal}
[[terminals]]
name = "ut-boston"
lat_deg = 42.36
lon_deg = -71.06
pop = "lndngbr1"
{backhaul}
"""


def plan(gsl: str = "", terminal: str = "", backhaul: str = "") -> Timeline:
    return plan_scenario(parse_scenario(BASE.format(gsl=gsl, terminal=terminal, backhaul=backhaul), "a.toml"))


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * R_KM * math.asin(math.sqrt(a))


def home_path(tl: Timeline) -> dict:
    return next(p for p in plan_summary(tl, [])["paths"] if p.get("home_pop"))


@pytest.fixture(scope="module")
def plain() -> Timeline:
    return plan()


def test_default_framing_delay_is_half_the_downlink_frame_on_the_beam_only(plain):
    """Default: the beam carries half of the 1/750 s downlink frame each way (302 OFDM symbols of 1,056 samples
    at 240 MHz plus a 68/15 us guard), gateway antennas nothing; plan's access part is twice that."""
    half_frame_ms = (302 * 1056 / 240e6 + 68 / 15 * 1e-6) / 2 * 1e3
    assert half_frame_ms == pytest.approx(1e3 / 750 / 2, rel=1e-9)
    ut = plain.node_index("ut-boston")
    assert plain.nodes[ut].info["access_delay_ms"] == pytest.approx(half_frame_ms, abs=1e-9)
    assert all(plain.nodes[i].info["access_delay_ms"] == 0.0 for i in plain.nodes_of("gateway"))
    access = home_path(plain)["rtt_split_ms"]["access"]
    assert access["min"] == pytest.approx(2 * half_frame_ms, abs=1e-4) == access["max"]


def test_access_delay_rides_on_every_radio_link_and_plan_splits_it_out():
    plain = plan(terminal="framing_delay_ms = 0.0")
    tl = plan(gsl="scheduling_delay_ms = 0.75\nframing_delay_ms = 0.25",
              terminal="scheduling_delay_ms = 2.0\nframing_delay_ms = 0.5")
    gsl = np.flatnonzero(tl.link_class == GSL)
    assert np.array_equal(tl.peer, plain.peer)  # the satellites chosen do not depend on it
    ut = tl.node_index("ut-boston")
    want = np.where(np.isin(tl.link_a[gsl], [ut]), 2.5, 1.0)[:, None]
    have = tl.peer[gsl] >= 0
    extra = tl.delay_ms[gsl].astype(np.float64) - plain.delay_ms[gsl]
    assert have.any() and np.allclose(extra[have], np.broadcast_to(want, extra.shape)[have], atol=1e-4)
    assert np.array_equal(tl.delay_ms[tl.link_class != GSL], plain.delay_ms[plain.link_class != GSL])
    # every terminal -> PoP path crosses the beam and at least one gateway antenna (more where it hops between
    # satellites through a gateway): plan's access part is 2 x the terms of the radio links the installed route
    # crosses, and its RTT at least the plain plan's + 2 x (2.5 + 1.0)
    p, q = home_path(tl), home_path(plain)
    access, rtt = [], []
    for k in range(tl.n_steps):
        nodes, links = route(tl, k)
        radio = [link for link in links if tl.link_class[link] == GSL]
        assert tl.link_a[radio[0]] == ut and len(radio) >= 2
        access.append(2 * sum(2.5 if tl.link_a[link] == ut else 1.0 for link in radio))
        rtt.append(2 * float(tl.delay_ms[links, k].astype(np.float64).sum()))
    for key, f in (("min", np.min), ("median", np.median), ("max", np.max)):
        assert p["rtt_split_ms"]["access"][key] == pytest.approx(f(access), abs=1e-4)
        assert p["rtt_ms"][key] == pytest.approx(f(rtt), abs=1e-3)
        assert q["rtt_split_ms"]["access"][key] == 0.0
    assert p["rtt_ms"]["min"] >= q["rtt_ms"]["min"] + 7.0 - 1e-3


@pytest.mark.parametrize("table, key", [("terminal", "framing_delay_ms = -1.0"), ("gsl", "scheduling_delay_ms = nan")])
def test_bad_access_delay_is_a_config_error_naming_the_key(table, key):
    with pytest.raises(ConfigError) as e:
        plan(**{table: key})
    assert f"{table}.{key.split(' ')[0]}" in str(e.value)


def test_bad_backhaul_policy_is_a_config_error():
    with pytest.raises(ConfigError) as e:
        plan(backhaul='[backhaul]\npolicy = "sideways"')
    assert "backhaul.policy" in str(e.value) and "space-first" in str(e.value)


def graph_at(tl: Timeline, k: int) -> nx.Graph:
    g = nx.Graph()
    for link in np.flatnonzero((tl.state[:, k] == 0) & (tl.peer[:, k] >= 0)).tolist():
        u, v, d = int(tl.link_a[link]), int(tl.peer[link, k]), float(tl.delay_ms[link, k])
        if not g.has_edge(u, v) or g[u][v]["d"] > d:
            g.add_edge(u, v, d=d, cls=int(tl.link_class[link]))
    return g


def class_weight(cls: int):
    return lambda u, v, e: e["d"] if e["cls"] == cls else 0.0


def route(tl: Timeline, k: int) -> tuple[list[int], list[int]]:
    """The path the shortest-delay protocol installs from the terminal to its home PoP at step k."""
    ut, pop = tl.node_index("ut-boston"), tl.node_index("pop-lndngbr1")
    return table_path(get_protocol("shortest-delay").compute(tl, k), ut, pop)


def exit_gateway(tl: Timeline, nodes: list[int], links: list[int]) -> str:
    first_fibre = next(i for i, link in enumerate(links) if tl.link_class[link] == FIBRE)
    return tl.nodes[nodes[first_fibre]].name


def test_backhaul_policies_ride_lasers_or_fibre_as_defined(plain):
    """Boston homed on London: space-first crosses the Atlantic by laser and lands at gs-london (the least fibre
    any path can have: that gateway's own fibre to the London PoP, by haversine here); ground-first lands at
    gs-new-york with the least laser delay any path to the PoP can have (networkx, lasers weighted alone) and
    crosses by the backbone; least-delay is networkx's least delay and never above either."""
    space, ground = (plan(backhaul=f'[backhaul]\npolicy = "{p}"') for p in ("space-first", "ground-first"))
    assert [plan_summary(t, [])["backhaul_policy"] for t in (plain, space, ground)] == \
        ["least-delay", "space-first", "ground-first"]
    ut, pop = plain.node_index("ut-boston"), plain.node_index("pop-lndngbr1")
    london = plain.nodes[plain.node_index("gs-london")].info
    pop_ll = plain.nodes[pop].info
    london_fibre_ms = haversine_km(london["lat_deg"], london["lon_deg"], pop_ll["lat_deg"], pop_ll["lon_deg"]) \
        * 1.3 / (C_KM_S / 1.47) * 1e3
    totals = {}
    for name, tl in (("least", plain), ("space", space), ("ground", ground)):
        totals[name] = []
        for k in range(tl.n_steps):
            nodes, links = route(tl, k)
            assert nodes and nodes[-1] == pop
            d = tl.delay_ms[links, k].astype(np.float64)
            cls = tl.link_class[links]
            totals[name].append(d.sum())
            g = graph_at(tl, k)
            if name == "least":
                assert d.sum() == pytest.approx(nx.shortest_path_length(g, ut, pop, weight="d"), abs=1e-3)
            elif name == "space":
                assert exit_gateway(tl, nodes, links) == "gs-london"
                assert d[cls == FIBRE].sum() == pytest.approx(london_fibre_ms, abs=1e-3)
                assert d[cls == FIBRE].sum() == pytest.approx(
                    nx.shortest_path_length(g, ut, pop, weight=class_weight(FIBRE)), abs=1e-3)
            else:
                assert exit_gateway(tl, nodes, links) == "gs-new-york"
                assert d[cls == ISL].sum() == pytest.approx(
                    nx.shortest_path_length(g, ut, pop, weight=class_weight(ISL)), abs=1e-3)
        # plan's prediction is the installed route's delay
        p = home_path(tl)
        assert p["rtt_ms"]["median"] == pytest.approx(2 * float(np.median(totals[name])), abs=1e-3)
    for k in range(plain.n_steps):
        assert totals["least"][k] <= min(totals["space"][k], totals["ground"][k]) + 1e-6
    # the two policies really differ here: one crosses the Atlantic in space, the other by fibre
    assert np.median(totals["ground"]) != pytest.approx(np.median(totals["space"]), abs=0.5)


def wgs84_km(lat_deg: np.ndarray, lon_deg: np.ndarray, h_km: np.ndarray) -> np.ndarray:
    a, f = 6378.137, 1 / 298.257223563
    e2 = f * (2 - f)
    la, lo = np.radians(np.asarray(lat_deg, np.float64)), np.radians(np.asarray(lon_deg, np.float64))
    n = a / np.sqrt(1 - e2 * np.sin(la) ** 2)
    h = np.asarray(h_km, np.float64)
    return np.stack([(n + h) * np.cos(la) * np.cos(lo), (n + h) * np.cos(la) * np.sin(lo),
                     (n * (1 - e2) + h) * np.sin(la)], axis=-1)


def test_pop_delay_beam_takes_the_visible_satellite_with_the_least_delay_to_the_home_pop():
    """At every step the beam's satellite gives the least terminal -> home PoP delay of all satellites above the
    terminal's 10 deg mask: slant range (WGS84, from the timeline's satellite positions) / c plus networkx's
    least delay from that satellite to the PoP over the other planned links. The default policy is no better."""
    tl = plan(gsl="hysteresis_km = 0.0", terminal='policy = "pop-delay"')
    default = plan(gsl="hysteresis_km = 0.0")
    ut, pop = tl.node_index("ut-boston"), tl.node_index("pop-lndngbr1")
    info = tl.nodes[ut].info
    r_ut = wgs84_km(info["lat_deg"], info["lon_deg"], 0.0)
    la, lo = math.radians(info["lat_deg"]), math.radians(info["lon_deg"])
    up = np.array([math.cos(la) * math.cos(lo), math.cos(la) * math.sin(lo), math.sin(la)])
    beam = next(i for i in np.flatnonzero(tl.link_class == GSL) if tl.link_a[i] == ut)
    sats = tl.nodes_of("sat")
    ours, theirs = [], []
    for k in range(tl.n_steps):
        lla = tl.sat_lla[sats, k].astype(np.float64)
        rel = wgs84_km(lla[:, 0], lla[:, 1], lla[:, 2]) - r_ut
        rng = np.linalg.norm(rel, axis=1)
        visible = np.flatnonzero(rel @ up >= math.sin(math.radians(10.0)) * rng)
        g = graph_at(tl, k)
        g.remove_node(ut)
        onward = nx.single_source_dijkstra_path_length(g, pop, weight="d")
        # the beam's default framing delay, half a 1/750 s frame, is the same whichever satellite it holds
        total = {int(sats[s]): rng[s] / C_KM_S * 1e3 + 1e3 / 750 / 2 + onward[int(sats[s])] for s in visible
                 if int(sats[s]) in onward}
        chosen = int(tl.peer[beam, k])
        assert chosen in total and total[chosen] <= min(total.values()) + 1e-3, k
        ours.append(float(tl.delay_ms[route(tl, k)[1], k].astype(np.float64).sum()))
        assert ours[-1] == pytest.approx(min(total.values()), abs=1e-3)
        links = route(default, k)[1]
        theirs.append(float(default.delay_ms[links, k].astype(np.float64).sum()))
    assert all(a <= b + 1e-3 for a, b in zip(ours, theirs))
    assert home_path(tl)["rtt_ms"]["median"] == pytest.approx(2 * float(np.median(ours)), abs=1e-3)


def test_pop_delay_without_pops_is_a_config_error():
    text = BASE.format(gsl="", terminal='policy = "pop-delay"', backhaul="").replace('pops = "starlink"', "") \
        .replace('pop = "lndngbr1"', "")
    with pytest.raises(ConfigError) as e:
        plan_scenario(parse_scenario(text, "a.toml"))
    assert "terminal.policy" in str(e.value) and "pops" in str(e.value)


def test_plugin_interface_gives_home_pops_and_the_policy():
    """A protocol written against the plugin interface alone routes each terminal to its home PoP (given here
    as lndngbr1; drawn for a country in another scenario, compared with the draw's own function) under the
    scenario's policy, on the same path as the built-in shortest-delay."""
    from routing.base import RouteTable, RoutingProtocol
    from routing.graph import build_graph, next_hops, policy_factors, reweighted
    from topologies.pops import country_shares, home_pops, starlink_pops

    class HomeOnly(RoutingProtocol):
        name = "home-only-test"

        def compute(self, timeline, step, snapshot=None):
            snap = snapshot if snapshot is not None else timeline.snapshot(step)
            graph = build_graph(timeline.link_a, snap, len(timeline.nodes))
            factor = policy_factors(timeline, self.backhaul_policy(timeline))
            if factor is not None:
                graph = reweighted(graph, factor)
            dest = np.array(sorted(set(self.home_pops(timeline).values())))
            dist, nh, link = next_hops(graph, dest)
            return RouteTable(step, dest, nh, link, dist)

    tl = plan(backhaul='[backhaul]\npolicy = "ground-first"')
    ut, pop = tl.node_index("ut-boston"), tl.node_index("pop-lndngbr1")
    assert HomeOnly.home_pops(tl) == {ut: pop} and HomeOnly.backhaul_policy(tl) == "ground-first"
    for k in range(tl.n_steps):
        assert table_path(HomeOnly().compute(tl, k), ut, pop) == route(tl, k)
    fr = plan_scenario(parse_scenario(BASE.format(gsl="", terminal="", backhaul="").replace(
        'pop = "lndngbr1"', 'country = "FR"').replace("seed = 5", "seed = 11"), "fr.toml"))
    want = home_pops([("ut-boston", "FR", None)], 11, starlink_pops(), country_shares())["ut-boston"]
    assert RoutingProtocol.home_pops(fr) == {fr.node_index("ut-boston"): fr.node_index(f"pop-{want}")}


def test_pop_delay_beam_changes_satellite_only_at_slot_boundaries():
    """With 15 s slots from second 12, the beam's satellite changes only at steps 12 and 27 of a run that
    starts on the minute (1 s steps), and it holds one at every step."""
    text = BASE.format(gsl="reconfiguration_interval_s = 15.0\nslot_offset_s = 12.0",
                       terminal='policy = "pop-delay"', backhaul="").replace("duration_s = 8", "duration_s = 40")
    tl = plan_scenario(parse_scenario(text, "a.toml"))
    ut = tl.node_index("ut-boston")
    beam = next(i for i in np.flatnonzero(tl.link_class == GSL) if tl.link_a[i] == ut)
    assert np.all(tl.peer[beam] >= 0)
    changes = set((np.flatnonzero(np.diff(tl.peer[beam])) + 1).tolist())
    assert changes <= {12, 27} and changes, changes
