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
    assert c.excluded["decaying"] == sum(r.mean_motion_rev_day > 15.5 for r in records)
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
