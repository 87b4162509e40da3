"""Grouping real TLE sets into shells, planes and slots."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sgp4.exporter import export_tle

from topologies.constellation import Constellation
from topologies.errors import ConfigError
from topologies.propagate import orbit_angles_deg, sgp4_states
from topologies.shells import constellation_from_tle, find_shells
from topologies.tle import TleRecord, load_tle, parse_tle
from topologies.walker import preset, walker_constellation

DATA = Path(__file__).resolve().parents[2] / "topologies" / "data" / "starlink-2023-07.tle"


@pytest.fixture(scope="module")
def records() -> list[TleRecord]:
    return load_tle(DATA)


def _angles_at_latest_epoch(c: Constellation) -> tuple[np.ndarray, np.ndarray]:
    t = max(s.jdsatepoch + s.jdsatepochF for s in c.satrecs)
    jd0 = np.floor(t - 0.5) + 0.5
    valid, r, v = sgp4_states(c.satrecs, np.array([jd0]), np.array([t - jd0]))
    assert valid.all()
    raan, _incl, u = orbit_angles_deg(r[:, 0], v[:, 0])
    return raan, u


def _check_structure(c: Constellation) -> None:
    shell = c.shells[0]
    assert sorted(set(c.plane.tolist())) == list(range(shell.planes))
    for p in range(shell.planes):
        slots = np.sort(c.slot[c.plane == p])
        assert slots.tolist() == list(range(slots.size))
    assert np.bincount(c.plane).max() == shell.sats_per_plane
    assert all(n == f"sat-{p}-{s}" for n, p, s in zip(c.names, c.plane, c.slot))


def test_starlink_53_deg_shell(records: list[TleRecord]) -> None:
    c = constellation_from_tle(records, inclination_deg=53.0)
    shell = c.shells[0]
    _check_structure(c)
    assert 60 <= shell.planes <= 80
    assert c.n_sats >= 1000
    assert 52.9 < shell.inclination_deg < 53.1  # not the 53.2 deg shell
    assert 540.0 < shell.altitude_km < 560.0
    assert shell.pattern == "delta" and shell.phasing == 0
    assert c.source == str(DATA)
    # Everything is accounted for: placed or left out for a stated reason.
    assert c.n_sats + sum(c.excluded.values()) == len(records)
    assert len(c.excluded_names) == sum(c.excluded.values())
    assert {"decaying", "orbit-raising", "other shell"} <= set(c.excluded)
    # Below 15.5 rev/day: launch batches still together are orbit-raising, the rest decaying (until
    # the multi-shell grouping, all of them were "decaying").
    low = sum(r.mean_motion_rev_day > 15.5 for r in records)
    assert c.excluded["decaying"] + c.excluded["orbit-raising"] == low
    placed = {s.satnum for s in c.satrecs}
    assert all(r.satrec.satnum not in placed for r in records if r.mean_motion_rev_day > 15.5)

    raan, u = _angles_at_latest_epoch(c)
    plane_centres = []
    for p in range(shell.planes):
        members = c.plane == p
        # One plane: RAANs within a couple of degrees (planes are about 5 deg apart).
        spread = np.ptp(np.mod(raan[members] - raan[members][0] + 180.0, 360.0))
        assert spread < 3.0
        plane_centres.append(raan[members][0])
        # Slots follow the argument of latitude.
        order = np.argsort(c.slot[members])
        assert (np.diff(u[members][order]) > 0).all()
    # Planes in increasing RAAN order, going once round the circle.
    steps = np.mod(np.diff(plane_centres), 360.0)
    assert steps.sum() < 360.0 and (steps > 2.0).all()


def test_the_two_53_deg_shells_are_kept_apart(records: list[TleRecord]) -> None:
    low = constellation_from_tle(records, inclination_deg=53.0)
    high = constellation_from_tle(records, inclination_deg=53.2)
    assert 53.15 < high.shells[0].inclination_deg < 53.3
    assert high.shells[0].altitude_km < low.shells[0].altitude_km
    assert not {s.satnum for s in low.satrecs} & {s.satnum for s in high.satrecs}


def test_other_shells_and_default(records: list[TleRecord]) -> None:
    polar = constellation_from_tle(records, inclination_deg=70.0)
    _check_structure(polar)
    assert 69.9 < polar.shells[0].inclination_deg < 70.1 and polar.n_sats > 150
    default = constellation_from_tle(records)
    assert default.n_sats >= max(c.n_at_altitude for c in find_shells(records)) - 5
    found = find_shells(records)
    incl = sorted(round(s.inclination_deg) for s in found)
    assert incl == [43, 53, 53, 70, 98]


def test_no_shell_near_requested_inclination(records: list[TleRecord]) -> None:
    with pytest.raises(ConfigError) as info:
        constellation_from_tle(records, inclination_deg=30.0)
    assert info.value.key == "inclination_deg"
    assert "53.05 deg" in str(info.value) and "shells found" in str(info.value)


def test_sparse_planes_are_left_out(records: list[TleRecord]) -> None:
    c = constellation_from_tle(records, inclination_deg=53.0, min_plane_size=21)
    assert c.excluded.get("sparse plane", 0) > 100
    assert np.bincount(c.plane).min() >= 21
    _check_structure(c)


def _as_tle_records(c: Constellation) -> list[TleRecord]:
    text = "\n".join(f"{name}\n" + "\n".join(export_tle(s)) for name, s in zip(c.names, c.satrecs))
    return parse_tle(text, source="walker.tle")


@pytest.mark.parametrize(("name", "pattern"), [("iridium", "star"), ("kuiper-630", "delta")])
def test_walker_round_trip_through_tle(name: str, pattern: str) -> None:
    shell = preset(name)
    walker = walker_constellation([shell], datetime(2023, 7, 18, tzinfo=UTC))
    c = constellation_from_tle(_as_tle_records(walker), min_plane_size=3)
    got = c.shells[0]
    assert (got.planes, got.sats_per_plane, got.pattern) == (shell.planes, shell.sats_per_plane, pattern)
    assert c.excluded == {} and c.n_sats == walker.n_sats
    assert abs(got.altitude_km - shell.altitude_km) < 2.0
    assert abs(got.inclination_deg - shell.inclination_deg) < 0.01
    # Same planes, and slots in the same cyclic order (the starting slot may differ).
    by_satnum = {s.satnum: i for i, s in enumerate(walker.satrecs)}
    w = np.array([by_satnum[s.satnum] for s in c.satrecs])
    plane_map = {int(p): int(walker.plane[w][c.plane == p][0]) for p in range(got.planes)}
    assert all((walker.plane[w][c.plane == p] == q).all() for p, q in plane_map.items())
    if pattern == "star":
        assert plane_map == {p: p for p in range(got.planes)}  # plane 0 after the seam
    offset = np.mod(walker.slot[w] - c.slot, shell.sats_per_plane)
    for p in range(got.planes):
        assert np.unique(offset[c.plane == p]).size == 1


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"min_plane_size": 0}, "min_plane_size"), ({"plane_gap_deg": 0.0}, "plane_gap_deg"),
     ({"altitude_band_km": float("nan")}, "altitude_band_km")],
)
def test_bad_thresholds(records: list[TleRecord], kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        constellation_from_tle(records[:50], **kwargs)
    assert info.value.key == key


# --- every shell of today's constellation: the full Starlink set of 2026-08-21 -------------------------

DATA_2026 = DATA.parent / "starlink-2026-08-21.tle"
SUBSET_2026 = DATA.parent / "starlink-2026-08-21-subset.tle"
MU_KM3_S2 = 398600.4418
FAMILIES_DEG = (43.0, 53.16, 70.0, 97.28)  # inclinations of the operational groups (from the file's line 2s)


def _raw_elements(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Inclination (deg), mean-motion altitude (km) and name of each satellite, read from the text
    columns directly (not through topologies.tle)."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    incl, alt, names = [], [], []
    for i, ln in enumerate(lines):
        if ln.startswith("2 "):
            rev_day = float(ln[52:63])
            n_rad_s = rev_day * 2 * np.pi / 86400
            incl.append(float(ln[8:16]))
            alt.append((MU_KM3_S2 / n_rad_s**2) ** (1 / 3) - 6378.137)
            names.append(lines[i - 2].strip())
    return np.array(incl), np.array(alt), names


def _independent_layers(incl: np.ndarray, alt: np.ndarray, family_deg: float) -> list[int]:
    """Satellites per altitude layer of one inclination family, by a method unlike the product's:
    greedy modes of a 0.5 km histogram (a mode needs 40 satellites), counted within +-0.5 km of the
    mode's median, above the 415 km decay limit. Returned by increasing altitude."""
    pool = alt[(np.abs(incl - family_deg) < 0.1) & (alt > 420.0)]
    modes = []
    while pool.size:
        counts, edges = np.histogram(pool, bins=np.arange(415.0, 650.0, 0.5))
        if counts.max() < 40:
            break
        k = int(np.argmax(counts))
        centre = float(np.median(pool[(pool >= edges[k] - 0.5) & (pool < edges[k + 1] + 0.5)]))
        modes.append((centre, int(np.count_nonzero(np.abs(pool - centre) <= 0.5))))
        pool = pool[np.abs(pool - centre) > 1.5]
    return [n for _c, n in sorted(modes)]


@pytest.fixture(scope="module")
def records_2026() -> list[TleRecord]:
    return load_tle(DATA_2026)


@pytest.fixture(scope="module")
def all_2026(records_2026: list[TleRecord]) -> Constellation:
    return constellation_from_tle(records_2026)


def test_2026_set_yields_every_operational_shell(records_2026: list[TleRecord], all_2026: Constellation) -> None:
    incl, alt, _names = _raw_elements(DATA_2026)
    assert len(incl) == len(records_2026) == 10_744
    found = find_shells(records_2026)
    assert len(all_2026.shells) == len(found)
    for family in FAMILIES_DEG:
        ours = sorted((c for c in found if abs(c.inclination_deg - family) < 0.1), key=lambda c: c.altitude_km)
        expected = _independent_layers(incl, alt, family)
        # the same layers, each with the same satellites to within 1% (or 3): the two altitudes differ
        # per satellite (mean motion vs SGP4's semi-major axis), so window edges move a few satellites
        assert len(ours) == len(expected), (family, [c.n_at_altitude for c in ours], expected)
        for c, n in zip(ours, expected):
            assert abs(c.n_at_altitude - n) <= max(3, 0.01 * n), (family, c, n)
    # The figures: ~3,230 at 43 deg ~485 km; the 53.2 deg group at 450-480 km in five layers
    # (plus one at 540 km); ~700 at 70 deg; the polar group at two altitudes.
    by_family = {f: [c for c in found if abs(c.inclination_deg - f) < 0.1] for f in FAMILIES_DEG}
    assert 3200 <= sum(c.n_at_altitude for c in by_family[43.0]) <= 3260
    assert len([c for c in by_family[53.16] if 450 < c.altitude_min_km < 480]) == 5
    assert 4000 <= sum(c.n_at_altitude for c in by_family[53.16] if c.altitude_max_km < 480) <= 4200
    assert 670 <= sum(c.n_at_altitude for c in by_family[70.0]) <= 710
    assert len(by_family[97.28]) == 2
    # every shell is a +Grid: contiguous planes and slots, names sat-<shell>-<plane>-<slot>
    c = all_2026
    for k, shell in enumerate(c.shells):
        m = c.shell == k
        assert sorted(set(c.plane[m].tolist())) == list(range(shell.planes)) and shell.planes >= 3
        for p in range(shell.planes):
            assert sorted(c.slot[m & (c.plane == p)].tolist()) == list(range(int((m & (c.plane == p)).sum())))
    assert all(n == f"sat-{k}-{p}-{s}" for n, k, p, s in zip(c.names, c.shell, c.plane, c.slot))


def test_2026_every_satellite_is_placed_or_has_a_reason(records_2026: list[TleRecord],
                                                      all_2026: Constellation) -> None:
    c = all_2026
    assert c.n_sats + sum(c.excluded.values()) == len(records_2026)
    assert c.transient == () and c.on_grid.all()
    assert set(c.excluded) <= {"decaying", "orbit-raising", "between shells", "sparse plane", "eccentric",
                               "sgp4 error"}
    incl, alt, names = _raw_elements(DATA_2026)
    low = alt < 415.5  # 15.5 rev/day, independently: below it nothing is in a shell
    placed = set(c.tle_names)
    assert not placed & {n for n, lo in zip(names, low) if lo}
    assert c.excluded["decaying"] + c.excluded["orbit-raising"] == int(low.sum())
    # ~330 of the 43 deg group still parked at ~355 km after launch: orbit-raising, not decaying
    why = dict(c.excluded_names)
    low_43 = (np.abs(incl - 43.0) < 0.1) & low
    centre = float(np.median(alt[low_43]))
    parked = [n for n, i, a in zip(names, low_43, alt) if i and abs(a - centre) <= 0.5]
    assert 350 < centre < 360 and len(parked) > 300 and all(why[n] == "orbit-raising" for n in parked)
    # "About 9,500 are in operational shells" (the issue, counting by inclination and altitude): the
    # layers hold their grids plus the satellites of their sparse planes
    in_layers = sum(x.n_at_altitude for x in find_shells(records_2026))
    assert in_layers == c.n_sats + c.excluded["sparse plane"] and 9_000 <= in_layers <= 9_500


def test_include_transient_adds_exactly_the_transient_ones(records_2026: list[TleRecord],
                                                           all_2026: Constellation) -> None:
    c = constellation_from_tle(records_2026, include_transient=True)
    transient_reasons = {"decaying", "orbit-raising", "between shells", "sparse plane", "eccentric"}
    want = {r: n for r, n in all_2026.excluded.items() if r in transient_reasons}
    assert c.transient_counts == want
    assert c.excluded == {r: n for r, n in all_2026.excluded.items() if r not in transient_reasons}
    assert c.n_sats == all_2026.n_sats + sum(want.values())
    assert c.n_sats + sum(c.excluded.values()) == len(records_2026) == 10_744  # all of them, in this file
    # the grid is unchanged, the transient ones come after it, off the grid, named sat-t-<n>
    n_grid = all_2026.n_sats
    assert c.names[:n_grid] == all_2026.names
    assert (c.shell[:n_grid] == all_2026.shell).all() and (c.slot[:n_grid] == all_2026.slot).all()
    off = ~c.on_grid
    assert off[n_grid:].all() and not off[:n_grid].any()
    assert (c.shell[off] == -1).all() and (c.plane[off] == -1).all() and (c.slot[off] == -1).all()
    assert [n for n, _r in c.transient] == [f"sat-t-{i}" for i in range(off.sum())] == list(c.names[n_grid:])
    assert set(c.tle_names[n_grid:]) == {n for n, r in all_2026.excluded_names if r in transient_reasons}


def test_shell_inclination_still_picks_one(records_2026: list[TleRecord], all_2026: Constellation) -> None:
    one = constellation_from_tle(records_2026, inclination_deg=43.0)
    assert len(one.shells) == 1 and abs(one.shells[0].inclination_deg - 43.0) < 0.05
    _check_structure(one)
    k = next(i for i, s in enumerate(all_2026.shells) if abs(s.inclination_deg - 43.0) < 0.05)
    # the same satellites as that shell of the full build, and everything else accounted for
    assert {s.satnum for s in one.satrecs} == {all_2026.satrecs[i].satnum
                                                for i in np.flatnonzero(all_2026.shell == k)}
    assert one.excluded["other shell"] == int(np.count_nonzero(all_2026.shell != k))
    assert one.n_sats + sum(one.excluded.values()) == len(records_2026)
    # several layers at 53.16 deg: the most populous, or the one nearest the altitude asked for
    assert constellation_from_tle(records_2026, inclination_deg=53.2).n_sats == max(
        int(np.count_nonzero(all_2026.shell == k)) for k, s in enumerate(all_2026.shells)
        if abs(s.inclination_deg - 53.16) < 0.05)
    near = constellation_from_tle(records_2026, inclination_deg=53.2, altitude_km=475.0)
    assert abs(near.shells[0].altitude_km - 475.0) < 5.0 and near.n_sats < 200
    with pytest.raises(ConfigError, match="no shell within 10.0 km of altitude 600.0 km"):
        constellation_from_tle(records_2026, inclination_deg=53.2, altitude_km=600.0)


def test_planes_found_from_each_layers_own_raan_gaps(all_2026: Constellation) -> None:
    """The polar layer at 462 km has planes 0.77 deg apart, each within 0.15 deg: a fixed 2 deg
    threshold merged them in pairs. RAANs here come from SGP4 states, as in the product, but the
    check is on the result: tight planes, well apart."""
    k = next(i for i, s in enumerate(all_2026.shells) if abs(s.inclination_deg - 97.28) < 0.05
             and s.altitude_km < 500)
    idx = np.flatnonzero(all_2026.shell == k)
    sub = Constellation(names=tuple(all_2026.names[i] for i in idx), satrecs=tuple(all_2026.satrecs[i] for i in idx),
                        shell=np.zeros(idx.size, int), plane=all_2026.plane[idx], slot=all_2026.slot[idx],
                        shells=(all_2026.shells[k],))
    raan, _u = _angles_at_latest_epoch(sub)
    centres = []
    for p in range(sub.shells[0].planes):
        r = raan[sub.plane == p]
        assert np.ptp(np.mod(r - r[0] + 180.0, 360.0)) < 0.3
        centres.append(float(np.median(r)))
    gaps = np.diff(np.sort(centres))
    assert gaps.min() > 0.6 and sub.shells[0].sats_per_plane <= 24


def test_a_file_with_no_operational_shell_is_one_config_error(records_2026: list[TleRecord]) -> None:
    with pytest.raises(ConfigError) as info:
        constellation_from_tle(records_2026[:40])
    assert "no operational shell" in str(info.value) and str(DATA_2026) in str(info.value)
    assert "\n" not in str(info.value)


def test_subset_keeps_every_shell(all_2026: Constellation) -> None:
    sub = load_tle(SUBSET_2026)
    assert 500 <= len(sub) <= 1500
    c = constellation_from_tle(sub, include_transient=True)
    # the same shells: inclinations within 0.05 deg, mean altitudes (the name's km) equal
    assert len(c.shells) == len(all_2026.shells)
    for a, b in zip(c.shells, all_2026.shells):
        assert abs(a.inclination_deg - b.inclination_deg) < 0.05 and a.name.split("-")[-1] == b.name.split("-")[-1]
    assert c.transient and c.n_sats + sum(c.excluded.values()) == len(sub)


def test_transient_satellites_are_nodes_that_carry_ground_links(tmp_path: Path) -> None:
    """Planned end to end: no laser link touches a satellite off the grid, a gateway right under one
    uses it, and the addressing plan accepts it."""
    from emulator.addressing import AddressPlan
    from topologies.plan import plan_scenario
    from topologies.scenario import parse_scenario
    from topologies.timeline import LINK_CLASSES, Timeline

    def scenario(sites: str) -> str:
        return (f'[time]\nstart = "2026-08-22T00:00:00Z"\nduration_s = 2\n[constellation]\ntle = "{SUBSET_2026}"\n'
                f'include_transient = true\n[gsl]\nmin_elevation_deg = 25.0\nsatellites = "any"\n{sites}')

    probe = plan_scenario(parse_scenario(scenario(""), "probe.toml"))
    sats = probe.nodes_of("sat")
    off = [i for i in sats if probe.nodes[i].info["shell"] == -1]
    assert off and all(probe.nodes[i].info["transient"] and probe.nodes[i].name.startswith("sat-t-") for i in off)
    # a gateway under an off-grid satellite (one not decaying, so still up at step 1)
    target = next(i for i in off if probe.nodes[i].info["transient"] in ("between shells", "sparse plane"))
    lat, lon, _alt = (float(x) for x in probe.sat_lla[sats.index(target), 0])
    tl = plan_scenario(parse_scenario(scenario(f'[[ground.sites]]\nname = "gs-under"\nlat_deg = {lat}\n'
                                               f'lon_deg = {lon}\n'), "under.toml"))
    isl = tl.link_class == LINK_CLASSES.index("isl")
    gsl = tl.link_class == LINK_CLASSES.index("gsl")
    laser_ends = set(tl.link_a[isl].tolist()) | set(np.unique(tl.peer[isl]).tolist())
    assert not laser_ends & set(off)
    assert tl.node_index(probe.nodes[target].name) in tl.peer[gsl][:, 0].tolist()
    AddressPlan().assign(tl)  # every node, including the off-grid ones, gets addresses
    tl.save(tmp_path / "tl.npz")
    back = Timeline.load(tmp_path / "tl.npz")
    assert [n.info for n in back.nodes] == [n.info for n in tl.nodes]
