"""Walker constellations: counts, plane spacing, phasing, altitude, star versus delta."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from topologies.constellation import Constellation, Shell
from topologies.errors import ConfigError
from topologies.frames import EARTH_RADIUS_KM
from topologies.propagate import julian_date, orbit_angles_deg, propagate, sgp4_states
from topologies.walker import PRESETS, preset, walker_constellation

EPOCH = datetime(2023, 7, 18, 12, 0, 0, tzinfo=UTC)


def _state_angles(constellation, when=EPOCH):  # type: ignore[no-untyped-def]
    jd, fr = julian_date(when)
    valid, r, v = sgp4_states(constellation.satrecs, np.array([jd]), np.array([fr]))
    assert valid.all()
    return orbit_angles_deg(r[:, 0], v[:, 0])


def _circ_diff(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    return np.mod(np.asarray(a) - b + 180.0, 360.0) - 180.0


def _circ_mean(a: np.ndarray) -> float:
    r = np.radians(a)
    return float(np.mod(np.degrees(np.arctan2(np.sin(r).mean(), np.cos(r).mean())), 360.0))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_counts_names_labels(name: str) -> None:
    shell = PRESETS[name]
    c = walker_constellation([shell], EPOCH)
    assert c.n_sats == shell.planes * shell.sats_per_plane == len(c.satrecs)
    assert c.shells == (shell,) and c.excluded == {} and c.excluded_names == ()
    assert c.source == f"walker:{name}"
    assert sorted(set(c.plane.tolist())) == list(range(shell.planes))
    assert np.bincount(c.plane).tolist() == [shell.sats_per_plane] * shell.planes
    assert c.names[0] == "sat-0-0" and c.names[-1] == f"sat-{shell.planes - 1}-{shell.sats_per_plane - 1}"
    assert all(n == f"sat-{p}-{s}" for n, p, s in zip(c.names, c.plane, c.slot))
    assert (c.shell == 0).all()


# sun-synchronous presets (ltan_h) count RAAN from the Sun: tests/unit/test_dawn_dusk.py checks them
@pytest.mark.parametrize("name", sorted(n for n, sh in PRESETS.items() if sh.ltan_h is None))
def test_plane_raan_spacing_inclination_and_phasing(name: str) -> None:
    shell = PRESETS[name]
    c = walker_constellation([shell], EPOCH)
    raan, incl, u = _state_angles(c)
    assert np.abs(incl - shell.inclination_deg).max() < 0.1
    span = 360.0 if shell.pattern == "delta" else 180.0
    expected_raan = c.plane * span / shell.planes
    # Osculating (SGP4 state) RAAN differs from the mean one by short-period J2 terms only.
    assert np.abs(_circ_diff(raan, expected_raan)).max() < 0.1
    # In-plane spacing 360/S and inter-plane phase offset F * 360 / (P * S).
    expected_u = c.slot * 360.0 / shell.sats_per_plane + c.plane * shell.phasing * 360.0 / shell.n_sats
    assert np.abs(_circ_diff(u, expected_u)).max() < 0.2


def test_star_spans_half_circle_delta_full() -> None:
    star = walker_constellation([preset("iridium")], EPOCH)
    delta = walker_constellation([Shell("iridium-as-delta", "delta", 780.0, 86.4, 6, 11, 3)], EPOCH)
    raan_star = _state_angles(star)[0]
    raan_delta = _state_angles(delta)[0]
    plane_star = np.array([_circ_mean(raan_star[star.plane == p]) for p in range(6)])
    plane_delta = np.array([_circ_mean(raan_delta[delta.plane == p]) for p in range(6)])
    np.testing.assert_allclose(_circ_diff(plane_star[1:], plane_star[:-1]), 30.0, atol=0.1)
    np.testing.assert_allclose(_circ_diff(plane_delta[1:], plane_delta[:-1]), 60.0, atol=0.1)
    # Star: the seam between the last and the first plane is 180 - 5 * 30 = 30 deg wide, and
    # the first and last planes' normals point to opposite sides (they counter-rotate).
    assert np.isclose(np.mod(plane_star[0] - plane_star[-1], 360.0), 210.0, atol=0.1)


@pytest.mark.parametrize("name", ["starlink-shell1", "kuiper-630", "telesat-polar"])
def test_altitude_as_requested_over_a_day(name: str) -> None:
    shell = PRESETS[name]
    c = walker_constellation([shell], EPOCH)
    sub = c.satrecs[:: max(1, c.n_sats // 50)]
    small = Constellation(
        names=tuple(f"sat-0-{i}" for i in range(len(sub))), satrecs=sub, shell=np.zeros(len(sub)),
        plane=np.zeros(len(sub)), slot=np.arange(len(sub)),
        shells=(Shell("s", "delta", shell.altitude_km, shell.inclination_deg, 1, len(sub)),),
    )
    eph = propagate(small, EPOCH, 60.0, 24 * 60)  # a day, every minute
    assert eph.valid.all()
    radius_km = np.linalg.norm(eph.r_teme_km, axis=-1)
    mean_alt_km = radius_km.mean(axis=1) - EARTH_RADIUS_KM
    assert np.abs(mean_alt_km - shell.altitude_km).max() < 0.5
    # Circular: the radius only wobbles by the J2 short-period terms (a few km), and no drag.
    assert (radius_km.max(axis=1) - radius_km.min(axis=1)).max() < 25.0
    period_min = round(2.0 * np.pi / sub[0].no_kozai)
    first_orbit = radius_km[:, :period_min].mean(axis=1)
    last_orbit = radius_km[:, -period_min:].mean(axis=1)
    assert np.abs(last_orbit - first_orbit).max() < 0.5


def test_several_shells_are_named_by_shell() -> None:
    a = Shell("a", "delta", 550.0, 53.0, 4, 5, 1)
    b = Shell("b", "star", 1000.0, 90.0, 3, 2, 0)
    c = walker_constellation([a, b], EPOCH)
    assert c.n_sats == 26
    assert c.names[0] == "sat-0-0-0" and c.names[20] == "sat-1-0-0" and c.names[-1] == "sat-1-2-1"
    assert c.shell.tolist() == [0] * 20 + [1] * 6
    assert c.source == "walker:a+b"
    assert len({s.satnum for s in c.satrecs}) == 26


def test_epoch_sets_element_epoch() -> None:
    c = walker_constellation([preset("iridium")], EPOCH)
    jd, fr = julian_date(EPOCH)
    sat = c.satrecs[0]
    assert abs((sat.jdsatepoch + sat.jdsatepochF) - (jd + fr)) * 86400.0 < 1e-4


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"pattern": "rosette"}, "pattern"),
        ({"phasing": 72}, "phasing"),
        ({"phasing": -1}, "phasing"),
        ({"planes": 0}, "planes"),
        ({"sats_per_plane": 2.5}, "sats_per_plane"),
        ({"altitude_km": -5.0}, "altitude_km"),
        ({"inclination_deg": 181.0}, "inclination_deg"),
        ({"name": "has space"}, "name"),
    ],
)
def test_bad_shell_is_config_error_naming_the_field(kwargs: dict, key: str) -> None:
    fields = {"name": "x", "pattern": "delta", "altitude_km": 550.0, "inclination_deg": 53.0, "planes": 72,
              "sats_per_plane": 22, "phasing": 1} | kwargs
    with pytest.raises(ConfigError) as info:
        Shell(**fields)
    assert info.value.key == key


def test_bad_walker_requests() -> None:
    with pytest.raises(ConfigError, match="known: dawn-dusk, iridium, kuiper-630"):
        preset("starlink-v3")
    with pytest.raises(ConfigError):
        walker_constellation([], EPOCH)
    with pytest.raises(ConfigError, match="unique"):
        walker_constellation([preset("iridium"), preset("iridium")], EPOCH)
