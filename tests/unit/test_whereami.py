"""topologies.whereami: a compute node's view of its satellite, against plain loops over the timeline's
arrays and against orbital mechanics."""

from __future__ import annotations

import numpy as np
import pytest

from topologies.frames import geodetic_to_ecef_km
from topologies.plan import plan_scenario
from topologies.scenario import parse_scenario
from topologies.timeline import LINK_CLASSES
from topologies.whereami import WhereAmI

SITES = [("gs-london", 51.5, -0.13), ("gs-new-york", 40.7, -74.0), ("gs-nairobi", -1.29, 36.8),
         ("gs-sydney", -33.9, 151.2), ("gs-lima", -12.0, -77.0), ("gs-tokyo", 35.7, 139.7)]
SCENARIO = """
name = "whereami"
[time]
start = "2024-03-01T00:00:00Z"
duration_s = 3000
step_s = 10.0
[[constellation.shells]]
name = "shell"
planes = 12
sats_per_plane = 16
altitude_km = 550
inclination_deg = 53
[gsl]
min_elevation_deg = 10.0
""" + "".join(f'[[ground.sites]]\nname = "{n}"\nlat_deg = {la}\nlon_deg = {lo}\n' for n, la, lo in SITES) + \
    "".join(f'[[compute]]\nname = "dc-{p}-{s}"\nsatellite = "sat-{p}-{s}"\n' for p, s in
            ((0, 0), (3, 5), (7, 11), (11, 2)))
MU_KM3_S2 = 398600.4418
OMEGA_EARTH_RAD_S = 7.2921159e-5


@pytest.fixture(scope="module")
def tl():
    return plan_scenario(parse_scenario(SCENARIO, "<test>"))


@pytest.fixture(scope="module")
def wai(tl):
    return WhereAmI(tl, tl.nodes_of("compute"))


def _linked(tl, s: int, step: int) -> tuple[set[str], set[str]]:
    """Laser neighbours and linked ground nodes of satellite ``s``, by a loop over every link slot."""
    lasers, ground = set(), set()
    state, peer = tl.state[:, step].tolist(), tl.peer[:, step].tolist()
    for k, (a, cls_code) in enumerate(zip(tl.link_a.tolist(), tl.link_class.tolist(), strict=True)):
        if state[k] != 0:
            continue
        b = peer[k]
        cls = LINK_CLASSES[cls_code]
        if cls == "isl" and s in (a, b):
            lasers.add(tl.nodes[b if a == s else a].name)
        elif cls == "gsl" and b == s:
            ground.add(tl.nodes[a].name)
    return lasers, ground


def test_neighbours_and_ground_links_match_a_loop_over_the_links(tl, wai):
    seen_ground = 0
    for step in range(0, tl.n_steps, 37):
        views = wai.views(step)
        for name, v in views.items():
            s = tl.node_index(v["satellite"])
            lasers, ground = _linked(tl, s, step)
            assert set(v["laser_neighbours"]) == lasers and len(lasers) >= 2, (name, step)
            assert set(v["ground_linked"]) == ground, (name, step)
            seen_ground += bool(ground)
    assert seen_ground  # the test saw ground links at all


def test_next_handover_and_eclipse_match_a_scan_forward(tl, wai):
    assert tl.sat_sunlight is not None
    cache: dict[tuple[int, int], set[str]] = {}

    def ground(s: int, k: int) -> set[str]:
        if (s, k) not in cache:
            cache[(s, k)] = _linked(tl, s, k)[1]
        return cache[(s, k)]

    entries = exits = handovers = 0
    for step in range(0, tl.n_steps, 23):
        for v in wai.views(step).values():
            s = tl.node_index(v["satellite"])
            now = ground(s, step)
            k = next((k for k in range(step + 1, tl.n_steps) if ground(s, k) != ground(s, k - 1)), None)
            want = None if k is None else (k - step) * tl.step_s
            assert v["next_handover"]["in_s"] == want, (v["node"], step, now)
            lit = tl.sat_sunlight[s] == 0
            entry = next((k for k in range(step + 1, tl.n_steps) if lit[k - 1] and not lit[k]), None)
            exit_ = next((k for k in range(step + 1, tl.n_steps) if not lit[k - 1] and lit[k]), None)
            assert v["next_eclipse_entry"]["in_s"] == (None if entry is None else (entry - step) * tl.step_s)
            assert v["next_eclipse_exit"]["in_s"] == (None if exit_ is None else (exit_ - step) * tl.step_s)
            assert v["sunlight"] in ("sunlit", "penumbra", "umbra")
            entries += entry is not None
            exits += exit_ is not None
            handovers += k is not None
    assert entries and exits and handovers  # 50 minutes of a 95-minute orbit: each kind occurs


def test_position_and_velocity_are_those_of_a_circular_leo_orbit(tl, wai):
    """|r| ~ 6,371 + 550 km; the Earth-fixed velocity is the inertial sqrt(mu/r) less or more the Earth's
    rotation at that radius, and nearly perpendicular to r (near-circular orbit)."""
    for step in (0, tl.n_steps // 2, tl.n_steps - 1):
        for v in wai.views(step).values():
            r = np.array(v["position_ecef_km"])
            vel = np.array(v["velocity_ecef_km_s"])
            rn = np.linalg.norm(r)
            assert 6_356 + 540 < rn < 6_378 + 560
            v_inertial = np.sqrt(MU_KM3_S2 / rn)
            assert v_inertial - OMEGA_EARTH_RAD_S * rn - 0.05 < np.linalg.norm(vel) < v_inertial + 0.05
            assert abs(vel @ r / rn) < 0.1  # radial speed, km/s


def test_rejects_a_node_that_is_not_a_compute_node(tl):
    with pytest.raises(ValueError, match="not a compute node"):
        WhereAmI(tl, [0])


def test_gateways_in_view_by_elevation_and_every_linked_gateway_among_them(tl, wai):
    """Elevation recomputed here as asin(up / range) with the ellipsoid normal; the planner's links are an
    independent witness: a gateway linked to the satellite must be in view."""
    seen = 0
    for step in range(0, tl.n_steps, 41):
        for v in wai.views(step).values():
            r = np.array(v["position_ecef_km"])
            want = {}
            for g in tl.nodes_of("gateway"):
                info = tl.nodes[g].info
                lat, lon = np.radians(info["lat_deg"]), np.radians(info["lon_deg"])
                site = geodetic_to_ecef_km(info["lat_deg"], info["lon_deg"], info.get("alt_m", 0.0))
                d = r - site
                up = np.array([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
                el = np.degrees(np.arcsin(d @ up / np.linalg.norm(d)))
                if el >= 10.0:
                    want[tl.nodes[g].name] = el
            got = {x["gateway"]: x["elevation_deg"] for x in v["gateways_in_view"]}
            assert got.keys() == want.keys(), (v["node"], step)
            for name, el in want.items():
                assert got[name] == pytest.approx(el, abs=2e-3)
            assert list(got.values()) == sorted(got.values(), reverse=True)
            linked = {n for n in v["ground_linked"] if tl.nodes[tl.node_index(n)].kind == "gateway"}
            assert linked <= got.keys(), (v["node"], step, linked, got)
            seen += len(got)
    assert seen
