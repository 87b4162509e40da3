"""PoPs, fibre and home PoPs (issue 11) against facts recomputed here: the CSVs read with csv, great-circle
distances by a haversine written in this file, the backbone's connectivity with networkx, and a lower
bound on each terminal's RTT to its home PoP from geometry alone."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from emulator.addressing import AddressPlan
from emulator.cli import main, plan_summary
from topologies.errors import ConfigError
from topologies.plan import plan_scenario
from topologies.pops import country_shares, home_pops, starlink_pops
from topologies.scenario import parse_scenario
from topologies.timeline import LINK_CLASSES, LINK_ROLES, Timeline

DATA = Path(__file__).resolve().parents[2] / "topologies" / "data"
C_KM_S = 299_792.458
R_KM = 6371.0088


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * R_KM * math.asin(math.sqrt(a))


def csv_pops() -> dict[str, tuple[float, float]]:
    """PoP code -> (lat, lon) for every row with coordinates (the city's slug where the code is empty)."""
    out = {}
    with open(DATA / "starlink-pops.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["lat_deg"]:
                code = r["code"] or r["city"].lower().replace(" ", "-")
                out[code] = (float(r["lat_deg"]), float(r["lon_deg"]))
    return out


def csv_shares() -> dict[str, dict[str, float]]:
    with open(DATA / "starlink-country-pop.csv", newline="") as f:
        return {r["country_iso2"]: {kv.split(":")[0]: float(kv.split(":")[1]) for kv in r["pops_by_share"].split(";")}
                for r in csv.DictReader(f)}


SHELL = """
[constellation]
[[constellation.shells]]
name = "s"
altitude_km = 550.0
inclination_deg = 53.0
planes = 24
sats_per_plane = 20
phasing = 1
"""

SMALL = f"""
name = "pops"
seed = 5
[time]
start = "2023-07-18T12:00:00Z"
duration_s = 12
step_s = 1.0
{SHELL}
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
name = "gs-madrid"
lat_deg = 40.4168
lon_deg = -3.7038
[[ground.sites]]
name = "gs-new-york"
lat_deg = 40.7128
lon_deg = -74.0060
[terminal]
min_elevation_deg = 10.0
gso_exclusion_deg = 0.0
[[terminals]]
name = "ut-paris"
lat_deg = 48.85
lon_deg = 2.35
country = "FR"
[[terminals]]
name = "ut-boston"
lat_deg = 42.36
lon_deg = -71.06
pop = "nwyynyx1"
"""


@pytest.fixture(scope="module")
def small() -> Timeline:
    return plan_scenario(parse_scenario(SMALL, "small.toml"))


def test_pops_are_the_csv_rows_with_coordinates():
    want = csv_pops()
    got = {p.code: (p.lat_deg, p.lon_deg) for p in starlink_pops()}
    assert got == want and len(got) == 81


def test_home_pop_frequencies_follow_the_country_shares():
    """Drawn over many seeds, each PoP's frequency is within 4.5 binomial standard deviations of its share."""
    shares = csv_shares()
    pops = starlink_pops()
    table = country_shares()
    n = 4000
    for country in ("FR", "US", "AE"):
        p = shares[country]
        total = sum(p.values())
        draws = [home_pops([("ut-x", country, None)], seed, pops, table)["ut-x"] for seed in range(n)]
        counts = {c: draws.count(c) for c in set(draws)}
        assert set(counts) <= set(p)
        for code, share in p.items():
            q = share / total
            bound = 4.5 * math.sqrt(q * (1 - q) / n) + 1.0 / n
            assert abs(counts.get(code, 0) / n - q) <= bound, (country, code, counts.get(code, 0) / n, q)


def test_home_pop_draw_is_fixed_by_seed_and_name_and_a_given_pop_is_kept():
    pops, table = starlink_pops(), country_shares()
    terms = [(f"ut-{i}", "US", None) for i in range(40)]
    a = home_pops(terms, 7, pops, table)
    assert a == home_pops(terms, 7, pops, table)
    assert a == home_pops(list(reversed(terms)), 7, pops, table)  # order does not matter
    assert {k: v for k, v in home_pops(terms[:10], 7, pops, table).items()} == {k: a[k] for k, _, _ in terms[:10]}
    assert a != home_pops(terms, 8, pops, table)  # 40 draws over 22 PoPs: a change of seed changes some
    assert home_pops([("ut-a", "FR", "trnocan1")], 1, pops, table) == {"ut-a": "trnocan1"}


def test_terminals_carry_their_home_pop_and_its_host(small):
    info = {n.name: n.info for n in small.nodes}
    assert info["ut-boston"]["home_pop"] == "pop-nwyynyx1"
    assert info["ut-paris"]["home_pop"].removeprefix("pop-") in csv_shares()["FR"]
    for t in ("ut-paris", "ut-boston"):
        host = "h-" + info[t]["home_pop"]
        assert small.nodes[small.node_index(host)].kind == "host" and info[host]["gateway"] == info[t]["home_pop"]


def test_fibre_delay_is_distance_times_route_factor_over_light_in_fibre():
    text = SMALL.replace('pops = "starlink"', 'pops = "starlink"\n[backhaul]\nroute_factor = 2.0\nrefractive_index = 1.5')
    for tl, factor, index in ((plan_scenario(parse_scenario(SMALL, "a.toml")), 1.3, 1.47),
                              (plan_scenario(parse_scenario(text, "b.toml")), 2.0, 1.5)):
        fib = np.flatnonzero(tl.link_class == LINK_CLASSES.index("fibre"))
        assert len(fib) > 80
        for link in fib.tolist():
            a = tl.nodes[int(tl.link_a[link])].info
            b = tl.nodes[int(tl.peer[link, 0])].info
            want_ms = haversine_km(a["lat_deg"], a["lon_deg"], b["lat_deg"], b["lon_deg"]) * factor / (C_KM_S / index) * 1e3
            assert np.all(np.abs(tl.delay_ms[link] - want_ms) <= 1e-6 * want_ms + 1e-6)
            assert np.all(tl.state[link] == 0) and np.all(tl.peer[link] == tl.peer[link, 0])


def test_every_starlink_gateway_joins_its_nearest_pop():
    text = f"""
[time]
duration_s = 2
{SHELL}
[ground]
gateways = "starlink"
gateway_antennas = 1
pops = "starlink"
"""
    tl = plan_scenario(parse_scenario(text, "gw.toml"))
    pops = csv_pops()
    back = np.flatnonzero(tl.link_role == LINK_ROLES.index("backhaul"))
    gws = tl.nodes_of("gateway")
    assert len(gws) == 214 and sorted(tl.link_a[back].tolist()) == sorted(gws)
    for link in back.tolist():
        g = tl.nodes[int(tl.link_a[link])].info
        d = {c: haversine_km(g["lat_deg"], g["lon_deg"], la, lo) for c, (la, lo) in pops.items()}
        got = tl.nodes[int(tl.peer[link, 0])].info["code"]
        assert d[got] <= min(d.values()) + 1e-9, (tl.nodes[int(tl.link_a[link])].name, got, min(d, key=d.get))


def backbone_graph(tl) -> nx.Graph:
    bb = np.flatnonzero(tl.link_role == LINK_ROLES.index("backbone"))
    g = nx.Graph()
    g.add_nodes_from(tl.nodes_of("pop"))
    for link in bb.tolist():
        u, v = int(tl.link_a[link]), int(tl.peer[link, 0])
        a, b = tl.nodes[u].info, tl.nodes[v].info
        g.add_edge(u, v, km=haversine_km(a["lat_deg"], a["lon_deg"], b["lat_deg"], b["lon_deg"]))
    return g


@pytest.mark.parametrize("stretch", [1.1, 1.5])
def test_backbone_is_connected_and_within_its_stretch_of_the_great_circle(stretch):
    text = SMALL.replace('pops = "starlink"', f'pops = "starlink"\n[backhaul]\nbackbone_stretch = {stretch}')
    tl = plan_scenario(parse_scenario(text, "bb.toml"))
    g = backbone_graph(tl)
    pops = tl.nodes_of("pop")
    assert len(pops) == 81 and set(g.nodes) == set(pops) and nx.is_connected(g)
    ll = {i: (tl.nodes[i].info["lat_deg"], tl.nodes[i].info["lon_deg"]) for i in pops}
    worst = 0.0
    for i, lengths in nx.all_pairs_dijkstra_path_length(g, weight="km"):
        for j, km in lengths.items():
            direct = haversine_km(*ll[i], *ll[j])
            if i < j and direct > 0:
                worst = max(worst, km / direct)
            elif i < j:
                assert km == 0.0  # two PoPs at one place (Jakarta's two)
    assert worst <= stretch * (1 + 1e-9)
    # a sparse graph, not every pair linked; and each PoP linked to its nearest PoP (no shorter path exists)
    assert g.number_of_edges() < 0.15 * len(pops) * (len(pops) - 1) / 2
    for i in pops:
        nearest_j = min((j for j in pops if j != i), key=lambda j: haversine_km(*ll[i], *ll[j]))
        assert g.has_edge(i, nearest_j), tl.nodes[i].name
    if stretch == 1.1:
        # London - New York has a backbone path within 10% of the great circle (not round the South Atlantic)
        lon_, nyc = tl.node_index("pop-lndngbr1"), tl.node_index("pop-nwyynyx1")
        assert nx.dijkstra_path_length(g, lon_, nyc, weight="km") <= 1.1 * haversine_km(*ll[lon_], *ll[nyc])


def ecef_sphere(lat: float, lon: float, r: float) -> np.ndarray:
    la, lo = math.radians(lat), math.radians(lon)
    return r * np.array([math.cos(la) * math.cos(lo), math.cos(la) * math.sin(lo), math.sin(la)])


def test_plan_reports_rtt_to_home_pop_above_the_geometric_bound_and_equal_to_networkx(small):
    s = plan_summary(small, [])
    paths = {p["src"]: p for p in s["paths"] if "home_pop" in p}
    assert set(paths) == {"ut-paris", "ut-boston"}
    gws = [small.nodes[i].info for i in small.nodes_of("gateway")]
    for name, p in paths.items():
        t = small.nodes[small.node_index(name)].info
        pop = small.nodes[small.node_index(p["dst"])].info
        assert p["dst"] == t["home_pop"] and p["home_pop"] == pop["code"]
        # up to a satellite at >= 540 km and down to a gateway: at least twice the altitude and at least the
        # chord between terminal and gateway (on a sphere: 1% slack for the ellipsoid); then fibre at least
        # along the great circle from that gateway to the PoP
        bounds = []
        for g in gws:
            chord = float(np.linalg.norm(ecef_sphere(t["lat_deg"], t["lon_deg"], R_KM)
                                         - ecef_sphere(g["lat_deg"], g["lon_deg"], R_KM)))
            space = max(2 * 540.0, 0.99 * chord) / C_KM_S * 1e3
            fibre = haversine_km(g["lat_deg"], g["lon_deg"], pop["lat_deg"], pop["lon_deg"]) * 1.3 / (C_KM_S / 1.47) * 1e3
            bounds.append((2 * (space + fibre), 2 * fibre))
        assert p["reachable_fraction"] == 1.0
        assert p["rtt_ms"]["min"] >= min(b for b, _ in bounds) - 1e-3
        assert p["rtt_split_ms"]["fibre"]["min"] >= min(f for _, f in bounds) - 1e-3
        assert p["rtt_ms"]["min"] <= p["rtt_ms"]["median"] <= p["rtt_ms"]["p95"] <= p["rtt_ms"]["max"]
        # the least-delay RTT at every step, found by networkx on the up links
        src, dst = small.node_index(name), small.node_index(p["dst"])
        rtts = []
        for k in range(small.n_steps):
            g = nx.Graph()
            for link in np.flatnonzero((small.state[:, k] == 0) & (small.peer[:, k] >= 0)).tolist():
                u, v, w = int(small.link_a[link]), int(small.peer[link, k]), float(small.delay_ms[link, k])
                if not g.has_edge(u, v) or g[u][v]["w"] > w:
                    g.add_edge(u, v, w=w)
            rtts.append(2 * nx.shortest_path_length(g, src, dst, weight="w"))
        assert abs(p["rtt_ms"]["min"] - min(rtts)) < 1e-3 and abs(p["rtt_ms"]["max"] - max(rtts)) < 1e-3
        assert abs(p["rtt_ms"]["median"] - float(np.median(rtts))) < 1e-3


def test_plan_prints_home_pop_rtt_and_json_has_it(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(SMALL)
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ut-paris -> home PoP pop-" in out and "81 PoPs" in out and "min/median/p95/max" in out
    assert main(["plan", str(path), "--json"]) == 0
    import json

    paths = json.loads(capsys.readouterr().out)["paths"]
    boston = next(p for p in paths if p["src"] == "ut-boston")
    assert boston["dst"] == "pop-nwyynyx1" and set(boston["rtt_split_ms"]) == {"space", "access", "fibre"}


def test_timeline_with_fibre_round_trips_and_is_addressed(small, tmp_path):
    back = Timeline.load(small.save(tmp_path / "t.npz"))
    assert [n.kind for n in back.nodes] == [n.kind for n in small.nodes]
    assert np.array_equal(back.delay_ms, small.delay_ms) and np.array_equal(back.link_class, small.link_class)
    addr = AddressPlan().assign(back)
    fib = np.flatnonzero(back.link_class == LINK_CLASSES.index("fibre"))
    pop = back.nodes_of("pop")[0]
    assert addr.is_router[pop] and addr.loopback[pop] > 0
    for node in set(back.link_a[fib].tolist()) | set(back.peer[fib, 0].tolist()):
        names = [addr.ifname_a[l] for l in np.flatnonzero(back.link_a == node)] + \
                [addr.ifname_b[l] for l in np.flatnonzero(back.peer[:, 0] == node)]
        assert len(names) == len(set(names)) and all(len(n) <= 15 for n in names)


@pytest.mark.parametrize("change, key, words", [
    ('country = "FR"', "terminals[0].country", "'ZZ'"),
    ('pop = "nwyynyx1"', "terminals[1].pop", "'nowhere1'"),
])
def test_unknown_country_or_pop_is_a_one_line_error_naming_terminal_and_key(change, key, words):
    bad = SMALL.replace(change, change.split("=")[0] + '= "' + words.strip("'") + '"')
    with pytest.raises(ConfigError) as e:
        parse_scenario(bad, "bad.toml")
    msg = str(e.value)
    assert "\n" not in msg and key in msg and words in msg and "bad.toml" in msg
    assert ("ut-paris" if "country" in key else "ut-boston") in msg


def test_pops_need_a_home_for_every_terminal_and_a_gateway():
    no_home = SMALL.replace('country = "FR"\n', "")
    with pytest.raises(ConfigError, match=r"ut-paris.*neither country nor pop"):
        parse_scenario(no_home, "x.toml")
    no_gw = f"{SHELL}\n[ground]\npops = \"starlink\"\n"
    with pytest.raises(ConfigError, match="pops need gateways"):
        plan_scenario(parse_scenario(no_gw, "y.toml"))
    with pytest.raises(ConfigError, match="pops must be one of"):
        parse_scenario('[ground]\npops = "oneweb"\n', "z.toml")
    with pytest.raises(ConfigError, match="route_factor"):
        parse_scenario('[backhaul]\nroute_factor = 0.5\n', "w.toml")
