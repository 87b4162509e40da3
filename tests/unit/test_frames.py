"""Frames: GMST, TEME -> Earth-fixed, WGS84 geodetic, and look angles against skyfield."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sgp4.propagation import gstime

from topologies.frames import (
    WGS84_A_KM,
    WGS84_B_KM,
    ecef_to_geodetic,
    ecef_to_teme,
    geodetic_to_ecef_km,
    gmst_rad,
    look_angles,
    teme_to_ecef,
)
from topologies.propagate import julian_date, sgp4_states
from topologies.tle import load_tle

DATA = Path(__file__).resolve().parents[2] / "topologies" / "data" / "starlink-2023-07.tle"


def test_gmst_matches_sgp4_gstime() -> None:
    jd = np.array([2451544.5, 2455197.5, 2460143.5, 2460143.5, 2470000.5])
    fr = np.array([0.0, 0.25, 0.123456789, 0.999999, 0.5])
    expected = np.array([gstime(a + b) for a, b in zip(jd, fr)])
    diff = np.angle(np.exp(1j * (gmst_rad(jd, fr) - expected)))
    # gstime takes the summed date (precision ~5e-10 day); 1e-8 rad is 0.07 m at 7000 km.
    assert np.abs(diff).max() < 1e-8


def test_gmst_broadcasts_and_stays_in_range() -> None:
    jd = np.full((4, 1), 2460143.5)
    fr = np.linspace(0, 3, 7)[None, :]
    g = gmst_rad(jd, fr)
    assert g.shape == (4, 7)
    assert (g >= 0).all() and (g < 2 * np.pi).all()


def test_teme_ecef_round_trip_and_shapes() -> None:
    rng = np.random.default_rng(1)
    r = rng.normal(size=(5, 6, 3)) * 7000.0
    jd = np.full(6, 2460143.5)
    fr = np.linspace(0.0, 0.9, 6)
    e = teme_to_ecef(r, jd, fr)
    assert e.shape == (5, 6, 3)
    np.testing.assert_allclose(np.linalg.norm(e, axis=-1), np.linalg.norm(r, axis=-1), rtol=1e-14)
    np.testing.assert_allclose(e[..., 2], r[..., 2])
    np.testing.assert_allclose(ecef_to_teme(e, jd, fr), r, atol=1e-9)


def test_teme_to_ecef_rotates_by_gmst() -> None:
    jd, fr = 2460143.5, 0.3
    g = gmst_rad(jd, fr)
    # A point on the TEME x axis lies at longitude -GMST in the Earth-fixed frame.
    e = teme_to_ecef(np.array([7000.0, 0.0, 0.0]), jd, fr)
    lon = np.degrees(np.arctan2(e[1], e[0]))
    assert np.isclose(np.mod(lon + np.degrees(g) + 180, 360) - 180, 0.0, atol=1e-9)


def test_geodetic_known_points() -> None:
    np.testing.assert_allclose(geodetic_to_ecef_km(0.0, 0.0, 0.0), [WGS84_A_KM, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(geodetic_to_ecef_km(90.0, 0.0, 0.0), [0.0, 0.0, WGS84_B_KM], atol=1e-9)
    np.testing.assert_allclose(geodetic_to_ecef_km(0.0, 90.0, 1000.0), [0.0, WGS84_A_KM + 1.0, 0.0], atol=1e-9)


def test_geodetic_round_trip() -> None:
    rng = np.random.default_rng(7)
    lat = np.concatenate((rng.uniform(-90, 90, 2000), [90.0, -90.0, 0.0, 89.9999, -45.0]))
    lon = np.concatenate((rng.uniform(-179.999, 180, 2000), [0.0, 10.0, 180.0, -120.0, -180.0 + 1e-6]))
    alt_m = np.concatenate((rng.uniform(-1_000, 40_000_000, 2000), [0.0, 550_000.0, 0.0, 1200.0, 35_786_000.0]))
    r = geodetic_to_ecef_km(lat, lon, alt_m)
    lat2, lon2, alt2_km = ecef_to_geodetic(r)
    np.testing.assert_allclose(lat2, lat, atol=1e-9)
    away_from_poles = np.abs(lat) < 89.99
    dlon = np.mod(lon2 - lon + 180, 360) - 180
    assert np.abs(dlon[away_from_poles]).max() < 1e-9
    np.testing.assert_allclose(alt2_km, alt_m / 1000.0, atol=1e-6)


def test_look_angles_simple_geometry() -> None:
    lat, lon = 30.0, 40.0
    site = geodetic_to_ecef_km(lat, lon, 0.0)
    up = geodetic_to_ecef_km(lat, lon, 500_000.0)
    el, _az, rng_km = look_angles(site, lat, lon, up)
    assert np.isclose(el, 90.0, atol=1e-9) and np.isclose(rng_km, 500.0, atol=1e-6)
    north = geodetic_to_ecef_km(lat + 0.01, lon, 0.0)
    east = geodetic_to_ecef_km(lat, lon + 0.01, 0.0)
    _, az_n, _ = look_angles(site, lat, lon, north)
    _, az_e, _ = look_angles(site, lat, lon, east)
    assert np.isclose(az_n, 0.0, atol=0.01) or np.isclose(az_n, 360.0, atol=0.01)
    assert np.isclose(az_e, 90.0, atol=0.01)
    below = geodetic_to_ecef_km(-lat, lon + 180.0, 0.0)  # antipode
    el_b, _, _ = look_angles(site, lat, lon, below)
    assert el_b < -80.0


def test_look_angles_broadcast_sites_by_satellites() -> None:
    lat = np.array([0.0, 45.0, -60.0])
    lon = np.array([0.0, 90.0, 170.0])
    sites = geodetic_to_ecef_km(lat, lon, 0.0)
    targets = np.random.default_rng(3).normal(size=(4, 5, 3)) * 7000.0
    el, az, rng_km = look_angles(sites[:, None, None, :], lat[:, None, None], lon[:, None, None], targets[None])
    assert el.shape == az.shape == rng_km.shape == (3, 4, 5)
    el1, az1, r1 = look_angles(sites[1], lat[1], lon[1], targets[2, 3])
    assert np.isclose(el[1, 2, 3], el1) and np.isclose(az[1, 2, 3], az1) and np.isclose(rng_km[1, 2, 3], r1)


SITES = [  # lat_deg, lon_deg, elevation_m
    (35.6895, 139.69171, 40.0),  # Tokyo
    (51.5, -0.12, 10.0),  # London
    (0.0, -78.5, 2800.0),  # Quito-ish, on the equator
    (-33.9, 18.4, 0.0),  # Cape Town
    (64.1, -21.9, 50.0),  # Reykjavik
]


@pytest.mark.parametrize(("lat", "lon", "h_m"), SITES)
def test_look_angles_match_skyfield(lat: float, lon: float, h_m: float) -> None:
    skyfield_api = pytest.importorskip("skyfield.api")
    ts = skyfield_api.load.timescale(builtin=True)
    rec = load_tle(DATA)[0]
    sat = skyfield_api.EarthSatellite(rec.line1, rec.line2, rec.name, ts)
    site = skyfield_api.wgs84.latlon(lat, lon, elevation_m=h_m)
    times = [rec.epoch + timedelta(seconds=30 * k) for k in range(2880)]  # one day
    alt, az, dist = (sat - site).at(ts.from_datetimes(times)).altaz()

    jd = np.array([julian_date(t)[0] for t in times])
    fr = np.array([julian_date(t)[1] for t in times])
    valid, r_teme, _v = sgp4_states([rec.satrec], jd, fr)
    assert valid.all()
    r_ecef = teme_to_ecef(r_teme[0], jd, fr)
    el, azimuth, rng_km = look_angles(geodetic_to_ecef_km(lat, lon, h_m), lat, lon, r_ecef)

    visible = alt.degrees > 0.0
    assert visible.sum() > 50  # the satellite passes over every site in a day
    assert np.abs(el - alt.degrees).max() < 0.01
    daz = np.mod(azimuth - az.degrees + 180.0, 360.0) - 180.0
    assert np.abs(daz[visible]).max() < 0.01
    # UT1 - UTC (-0.024 s then) is neglected here but not by skyfield: ~10 m.
    assert np.abs(rng_km - dist.km).max() < 0.05
