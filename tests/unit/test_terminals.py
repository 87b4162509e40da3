"""User terminals (topologies/terminals.py, [[terminals]] in a scenario), checked with geometry written here.

Elevation and the separation from the geostationary arc are recomputed in this file from the satellites'
Earth-fixed positions with its own WGS84 conversion and a dense sweep of the arc, not with the product's
functions.
"""

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from topologies.errors import ConfigError
from topologies.ground import GroundSite
from topologies.gsl import GslConfig, gsl_assign
from topologies.plan import build_constellation, plan_scenario
from topologies.propagate import propagate
from topologies.scenario import parse_scenario
from topologies.terminals import TerminalConfig, gso_separation_deg, terminal_assign
from topologies.timeline import LINK_CLASSES

START = datetime(2023, 7, 18, 12, 0, 0, tzinfo=UTC)
N_STEPS = 240
# Nairobi and Quito sit under the GSO arc (it crosses their zenith): the rule binds there most
TERMINALS = [("ut-nairobi", -1.2921, 36.8219), ("ut-quito", -0.1807, -78.4678), ("ut-london", 51.5074, -0.1278),
             ("ut-sydney", -33.8688, 151.2093), ("ut-seattle", 47.6062, -122.3321)]

# --- geometry written for the test ---------------------------------------------------------------------
A_KM, F = 6378.137, 1 / 298.257223563
GEO_KM = 42164.17


def site_ecef(lat_deg: float, lon_deg: float) -> np.ndarray:
    lat, lon = math.radians(lat_deg), math.radians(lon_deg)
    e2 = F * (2 - F)
    n = A_KM / math.sqrt(1 - e2 * math.sin(lat) ** 2)
    return np.array([n * math.cos(lat) * math.cos(lon), n * math.cos(lat) * math.sin(lon),
                     n * (1 - e2) * math.sin(lat)])


def zenith(lat_deg: float, lon_deg: float) -> np.ndarray:
    lat, lon = math.radians(lat_deg), math.radians(lon_deg)
    return np.array([math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)])


def elevation_deg(lat_deg, lon_deg, r_km):
    rel = r_km - site_ecef(lat_deg, lon_deg)
    return np.degrees(np.arcsin(rel @ zenith(lat_deg, lon_deg) / np.linalg.norm(rel, axis=-1)))


def arc_separation_deg(lat_deg, lon_deg, r_km):
    """Angle to the nearest visible point of the GSO arc swept every 0.01 deg of longitude: never smaller
    than the true minimum (a sweep can only miss the exact minimum, not undercut it)."""
    lon = np.radians(np.arange(0.0, 360.0, 0.01))
    g = np.stack([GEO_KM * np.cos(lon), GEO_KM * np.sin(lon), np.zeros_like(lon)], axis=1) - site_ecef(lat_deg,
                                                                                                       lon_deg)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    g = g[g @ zenith(lat_deg, lon_deg) >= 0]
    rel = np.atleast_2d(r_km - site_ecef(lat_deg, lon_deg))
    rel /= np.linalg.norm(rel, axis=1, keepdims=True)
    return np.degrees(np.arccos(np.clip((rel @ g.T).max(axis=1), -1, 1)))


def boundaries(start: datetime, step_s: float, n: int, slot_s: float, offset_s: float) -> np.ndarray:
    """Steps opening a slot: the step grid against seconds since UTC midnight, counted out by hand."""
    since_midnight = start.hour * 3600 + start.minute * 60 + start.second
    slot_no = [math.floor((since_midnight + k * step_s - offset_s) / slot_s + 1e-9) for k in range(n)]
    return np.array([True] + [slot_no[k] != slot_no[k - 1] for k in range(1, n)])


def scenario_text(extra: str = "", terminals=TERMINALS, terminal_table: str = "") -> str:
    text = f"""
name = "ut"
[time]
start = "2023-07-18T12:00:00Z"
duration_s = {N_STEPS}
step_s = 1.0
[constellation]
preset = "starlink-shell1"
[gsl]
reconfiguration_interval_s = 15.0
slot_offset_s = 12.0
{extra}
[terminal]
{terminal_table}
[[ground.sites]]
name = "gs-london"
lat_deg = 51.5074
lon_deg = -0.1278
"""
    for name, lat, lon in terminals:
        text += f'[[terminals]]\nname = "{name}"\nlat_deg = {lat}\nlon_deg = {lon}\ncountry = "KE"\n'
    return text


@pytest.fixture(scope="module")
def planned():
    sc = parse_scenario(scenario_text())
    const = build_constellation(sc)
    eph = propagate(const, sc.time.start, sc.time.step_s, sc.time.n_steps)
    return sc, eph, plan_scenario(sc, const)


def beams(tl):
    """{terminal name: (link index)} of the terminals' GSL slots."""
    gsl = np.flatnonzero(tl.link_class == LINK_CLASSES.index("gsl"))
    return {tl.nodes[int(tl.link_a[l])].name: int(l) for l in gsl if tl.nodes[int(tl.link_a[l])].kind == "terminal"}


def test_every_assigned_satellite_is_above_the_mask_and_off_the_gso_arc(planned):
    _sc, eph, tl = planned
    links = beams(tl)
    assert set(links) == {t[0] for t in TERMINALS}
    bound = 0
    for name, lat, lon in TERMINALS:
        peer = tl.peer[links[name]]
        steps = np.flatnonzero(peer >= 0)
        assert len(steps) > 0.5 * N_STEPS, name
        r = eph.r_ecef_km[peer[steps], steps]  # (n, 3): the assigned satellite at each step
        assert (elevation_deg(lat, lon, r) >= 25.0 - 1e-9).all(), name
        assert (arc_separation_deg(lat, lon, r) >= 22.0 - 1e-6).all(), name
        # the rule is not idle: at some steps the highest satellite above the mask sits near the arc
        el_all = elevation_deg(lat, lon, eph.r_ecef_km[:, ::10].reshape(-1, 3)).reshape(eph.r_ecef_km.shape[0], -1)
        top = np.argmax(el_all, axis=0)
        bound += int((arc_separation_deg(lat, lon, eph.r_ecef_km[top, np.arange(0, N_STEPS, 10)]) <= 22.0).sum())
    assert bound > 0


def test_without_the_exclusion_an_equatorial_terminal_uses_satellites_near_the_arc(planned):
    sc, eph, _tl = planned
    sites = [GroundSite("ut-quito", -0.1807, -78.4678)]
    free = terminal_assign(sites, eph, sc.gsl_config(), TerminalConfig(gso_exclusion_deg=0.0))
    peer = free.peer[0]
    steps = np.flatnonzero(peer >= 0)
    sep = arc_separation_deg(-0.1807, -78.4678, eph.r_ecef_km[peer[steps], steps])
    assert (sep <= 22.0).any()


def test_terminals_change_satellite_only_at_slot_boundaries(planned):
    _sc, _eph, tl = planned
    b = boundaries(START, 1.0, N_STEPS, 15.0, 12.0)
    assert np.flatnonzero(b)[:3].tolist() == [0, 12, 27]
    for name, link in beams(tl).items():
        peer = tl.peer[link]
        new_sat = np.flatnonzero((peer[1:] != peer[:-1]) & (peer[1:] >= 0)) + 1
        assert b[new_sat].all(), (name, new_sat[~b[new_sat]])
    assert sum(int(np.sum(np.diff(tl.peer[l]) != 0)) for l in beams(tl).values()) > 0


def test_gso_separation_matches_a_dense_sweep():
    rng = np.random.default_rng(5)
    for lat, lon in ((-1.3, 36.8), (51.5, -0.1), (-33.9, 151.2), (70.0, 20.0)):
        # directions above the horizon, random over the sky, as vectors 1,000 km long
        az = rng.uniform(0, 2 * np.pi, 400)
        el = np.arcsin(rng.uniform(0, 1, 400))
        lat_r, lon_r = math.radians(lat), math.radians(lon)
        east = np.array([-math.sin(lon_r), math.cos(lon_r), 0.0])
        north = np.array([-math.sin(lat_r) * math.cos(lon_r), -math.sin(lat_r) * math.sin(lon_r), math.cos(lat_r)])
        d = (np.cos(el)[:, None] * (np.sin(az)[:, None] * east + np.cos(az)[:, None] * north)
             + np.sin(el)[:, None] * zenith(lat, lon))
        got = gso_separation_deg(lat, lon, 0.0, 1000.0 * d)
        want = arc_separation_deg(lat, lon, site_ecef(lat, lon) + 1000.0 * d)
        # the sweep's 0.01 deg of longitude is at most ~0.006 deg on the sky from these sites
        assert (got <= want + 1e-6).all() and (want - got <= 0.01).all(), (lat, lon, np.max(np.abs(got - want)))


def test_terminal_links_do_not_count_against_the_gateway_cap(planned):
    sc, eph, _tl = planned
    cfg = GslConfig(max_gateway_links_per_satellite=1, reconfiguration_interval_s=15.0)
    gw = [GroundSite("gs-london", 51.5074, -0.1278, antennas=1)]
    alone = gsl_assign(gw, eph, cfg)
    # terminals at the gateway's own place, with the gateway's mask and no arc rule, want its satellites
    terms = [GroundSite(f"ut-{k}", 51.5074, -0.1278) for k in range(3)]
    t = terminal_assign(terms, eph, cfg, TerminalConfig(min_elevation_deg=25.0, gso_exclusion_deg=0.0))
    assert (t.peer == alone.peer[0]).all()  # all three share the gateway's satellite: nothing is capped
    # and the planned timeline's gateway keeps the satellites it has without terminals
    no_terms = parse_scenario(scenario_text(terminals=[]))
    tl_a = plan_scenario(no_terms)
    _s, _e, tl_b = planned
    gsl = tl_a.link_class == LINK_CLASSES.index("gsl")
    assert np.array_equal(tl_a.peer[gsl], tl_b.peer[np.flatnonzero(tl_b.link_class == LINK_CLASSES.index("gsl"))[
        :int(gsl.sum())]])


def test_terminal_nodes_carry_country_and_pop():
    text = scenario_text(terminals=[]) + ('[[terminals]]\nname = "ut-a"\nlat_deg = 1.0\nlon_deg = 2.0\n'
                                          'pop = "frankfurt"\n')
    tl = plan_scenario(parse_scenario(text))
    node = tl.nodes[tl.node_index("ut-a")]
    assert node.kind == "terminal" and node.info["pop"] == "frankfurt" and node.info["country"] is None


@pytest.mark.parametrize("body, key", [
    ('name = "ut-a"\nlat_deg = 1.0\nlon_deg = 2.0\ncountry = "ke"\n', "terminals[0].country"),
    ('name = "ut-a"\nlat_deg = 1.0\nlon_deg = 2.0\ncountry = "KEN"\n', "terminals[0].country"),
    ('name = "gs-london"\nlat_deg = 1.0\nlon_deg = 2.0\n', "terminals[0].name"),
    ('name = "UT A"\nlat_deg = 1.0\nlon_deg = 2.0\n', "terminals[0].name"),
    ('name = "ut-a"\nlat_deg = 91.0\nlon_deg = 2.0\n', "terminals[0].lat_deg"),
    ('name = "ut-a"\nlat_deg = 1.0\nlon_deg = 2.0\nhome = "x"\n', "terminals[0].home"),
])
def test_bad_terminal_is_a_one_line_config_error_naming_the_key(body, key):
    text = scenario_text(terminals=[]) + "[[terminals]]\n" + body
    with pytest.raises(ConfigError) as e:
        parse_scenario(text, "ut.toml")
    msg = str(e.value)
    assert "\n" not in msg and f"key '{key}'" in msg and msg.startswith("ut.toml:"), msg


@pytest.mark.parametrize("table, key", [("gso_exclusion_deg = 95.0", "terminal.gso_exclusion_deg"),
                                        ("min_elevation_deg = -1.0", "terminal.min_elevation_deg"),
                                        ('policy = "closest"', "terminal.policy"),
                                        ("mask = 3", "terminal.mask")])
def test_bad_terminal_table_names_the_key(table, key):
    with pytest.raises(ConfigError) as e:
        parse_scenario(scenario_text(terminal_table=table), "ut.toml")
    assert "\n" not in str(e.value) and f"key '{key}'" in str(e.value), str(e.value)


def test_duplicate_terminal_names_are_refused():
    text = scenario_text(terminals=[("ut-a", 1.0, 2.0), ("ut-a", 3.0, 4.0)])
    with pytest.raises(ConfigError, match=r"key 'terminals\[1\]\.name'.*used twice"):
        parse_scenario(text, "ut.toml")


def test_plan_reports_each_terminal_and_its_share_of_steps_with_a_satellite(planned, capsys):
    from emulator.cli import plan_summary, print_plan

    _sc, _eph, tl = planned
    s = plan_summary(tl, [])
    assert s["nodes"]["terminal"] == len(TERMINALS)
    links = beams(tl)
    for t in s["terminals"]:
        peer = tl.peer[links[t["name"]]]
        assert t["with_satellite_fraction"] == pytest.approx(np.count_nonzero(peer >= 0) / N_STEPS, abs=1e-4)
        assert t["handovers"] == sum(1 for k in range(1, N_STEPS) if peer[k] != peer[k - 1])
    assert s["gsl"]["antennas"] == 1  # the gateway's one antenna; terminal beams are counted apart
    print_plan(s, None)
    assert f"{len(TERMINALS)} user terminals" in capsys.readouterr().out
