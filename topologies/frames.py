"""Reference frames: TEME (what SGP4 returns) to Earth-fixed, WGS84 geodetic, topocentric look angles.

Every function is a numpy array expression that broadcasts like ordinary arithmetic, so one call
handles all satellites, times and sites at once. Vectors are on the last axis (``(..., 3)``).

The TEME -> Earth-fixed rotation is the one SGP4 is defined with (Vallado et al. 2006, "Revisiting
Spacetrack Report #3"): a single rotation about z by the IAU-82 Greenwich mean sidereal time. What is
neglected, and how much it matters for satellites at a few hundred km:

* UT1 - UTC: UTC is used for UT1. |UT1 - UTC| < 0.9 s by definition (it was about -0.02 s in 2023);
  0.9 s of Earth rotation moves a point on the equator by about 0.42 km and a LEO satellite by about
  0.45 km in the Earth-fixed frame.
* Polar motion (x_p, y_p < 0.5 arcsec): about 15 m at the surface. The Earth-fixed frame here is
  therefore the pseudo Earth-fixed frame (PEF), not ITRF.
* The equation of the equinoxes is *not* neglected: TEME's x axis is the mean equinox, so rotating by
  mean (not apparent) sidereal time is exact for it.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: WGS84 semi-major axis (equatorial radius), km.
WGS84_A_KM = 6378.137
#: WGS84 flattening.
WGS84_F = 1.0 / 298.257223563
#: WGS84 semi-minor axis (polar radius), km.
WGS84_B_KM = WGS84_A_KM * (1.0 - WGS84_F)
#: WGS84 first eccentricity squared.
WGS84_E2 = WGS84_F * (2.0 - WGS84_F)
#: Equatorial radius used for "altitude above the Earth" of a spherical Earth, km.
EARTH_RADIUS_KM = WGS84_A_KM

#: Julian date of J2000.0 (2000-01-01 12:00 TT; here used on the UT1 ~ UTC scale, as IAU-82 does).
JD_J2000 = 2451545.0

FloatArray = NDArray[np.float64]


def gmst_rad(jd: ArrayLike, fr: ArrayLike) -> FloatArray:
    """Greenwich mean sidereal time, IAU-82 model, UT1 taken equal to UTC.

    Parameters
    ----------
    jd, fr : array_like
        Julian date split in two parts (any shapes that broadcast), as ``sgp4.api.jday`` returns:
        ``jd`` is usually the whole part ending in .5 and ``fr`` the fraction of a day, so that the
        sum keeps sub-microsecond precision.

    Returns
    -------
    numpy.ndarray
        GMST in radians, in [0, 2 pi), shape of ``jd + fr``.
    """
    jd_a = np.asarray(jd, dtype=np.float64)
    fr_a = np.asarray(fr, dtype=np.float64)
    whole_days = jd_a - JD_J2000
    t_cent = (whole_days + fr_a) / 36525.0
    # The 360 deg/day term would lose precision if evaluated on the summed date: keep its whole
    # days out (whole rotations) and take the fractions separately.
    rotation_deg = 360.0 * (np.fmod(whole_days, 1.0) + np.fmod(fr_a, 1.0))
    rest_s = 67310.54841 + t_cent * (8640184.812866 + t_cent * (0.093104 - 6.2e-6 * t_cent))
    theta_deg = np.mod(rotation_deg + rest_s / 240.0, 360.0)
    return np.asarray(np.radians(theta_deg), dtype=np.float64)


def _rotate_z(vec: FloatArray, angle_rad: FloatArray) -> FloatArray:
    """Rotate the frame (not the vector) about z by ``angle_rad``: (..., 3) -> (..., 3)."""
    c = np.cos(angle_rad)
    s = np.sin(angle_rad)
    x = vec[..., 0]
    y = vec[..., 1]
    return np.stack((c * x + s * y, -s * x + c * y, np.broadcast_to(vec[..., 2], (c * x).shape)), axis=-1)


def teme_to_ecef(r_teme_km: ArrayLike, jd: ArrayLike, fr: ArrayLike) -> FloatArray:
    """Rotate TEME positions into the Earth-fixed frame (pseudo Earth-fixed: no polar motion).

    Parameters
    ----------
    r_teme_km : array_like, shape (..., 3)
        Positions in km in the TEME frame of date.
    jd, fr : array_like
        Julian date (UTC) of each position, split as for :func:`gmst_rad`; shapes broadcast against
        ``r_teme_km[..., 0]`` (e.g. ``(n_t,)`` with positions ``(n_sat, n_t, 3)``).

    Returns
    -------
    numpy.ndarray, shape (..., 3)
        Earth-fixed positions in km. NaN in gives NaN out.
    """
    r = np.asarray(r_teme_km, dtype=np.float64)
    return _rotate_z(r, gmst_rad(jd, fr))


def ecef_to_teme(r_ecef_km: ArrayLike, jd: ArrayLike, fr: ArrayLike) -> FloatArray:
    """Inverse of :func:`teme_to_ecef` (same conventions, shapes and units)."""
    r = np.asarray(r_ecef_km, dtype=np.float64)
    return _rotate_z(r, -gmst_rad(jd, fr))


def geodetic_to_ecef_km(lat_deg: ArrayLike, lon_deg: ArrayLike, alt_m: ArrayLike) -> FloatArray:
    """WGS84 geodetic coordinates to Earth-fixed Cartesian coordinates.

    Parameters
    ----------
    lat_deg, lon_deg : array_like
        Geodetic latitude and longitude in degrees (east positive); shapes broadcast.
    alt_m : array_like
        Height above the ellipsoid in **metres** (sites are given in metres, as in the cities file).

    Returns
    -------
    numpy.ndarray, shape (..., 3)
        Position in km.
    """
    lat = np.radians(np.asarray(lat_deg, dtype=np.float64))
    lon = np.radians(np.asarray(lon_deg, dtype=np.float64))
    h_km = np.asarray(alt_m, dtype=np.float64) / 1000.0
    sin_lat = np.sin(lat)
    n_km = WGS84_A_KM / np.sqrt(1.0 - WGS84_E2 * sin_lat**2)  # prime-vertical radius of curvature
    xy = (n_km + h_km) * np.cos(lat)
    x = xy * np.cos(lon)
    y = xy * np.sin(lon)
    z = (n_km * (1.0 - WGS84_E2) + h_km) * sin_lat
    x, y, z = np.broadcast_arrays(x, y, z)
    return np.stack((x, y, z), axis=-1)


def ecef_to_geodetic(r_ecef_km: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Earth-fixed Cartesian coordinates to WGS84 geodetic coordinates.

    Bowring's iteration, started from his parametric-latitude guess; four fixed iterations are far
    below a millimetre from the surface to geostationary altitude (the error falls by a factor of
    about 1e-3 per iteration).

    Parameters
    ----------
    r_ecef_km : array_like, shape (..., 3)
        Earth-fixed positions in km.

    Returns
    -------
    lat_deg, lon_deg, alt_km : numpy.ndarray, each shape (...)
        Geodetic latitude in [-90, 90] deg, longitude in (-180, 180] deg, height above the
        ellipsoid in km.
    """
    r = np.asarray(r_ecef_km, dtype=np.float64)
    x = r[..., 0]
    y = r[..., 1]
    z = r[..., 2]
    p = np.hypot(x, y)
    lon = np.arctan2(y, x)
    ep2 = WGS84_E2 / (1.0 - WGS84_E2)  # second eccentricity squared
    beta = np.arctan2(z * WGS84_A_KM, p * WGS84_B_KM)
    lat = beta
    for _ in range(4):
        lat = np.arctan2(z + ep2 * WGS84_B_KM * np.sin(beta) ** 3, p - WGS84_E2 * WGS84_A_KM * np.cos(beta) ** 3)
        beta = np.arctan2((1.0 - WGS84_F) * np.sin(lat), np.cos(lat))
    sin_lat = np.sin(lat)
    cos_lat = np.cos(lat)
    n_km = WGS84_A_KM / np.sqrt(1.0 - WGS84_E2 * sin_lat**2)
    # Height formula that stays well conditioned at the poles as well as at the equator.
    alt_km = p * cos_lat + z * sin_lat - WGS84_A_KM**2 / n_km
    return np.degrees(lat), np.degrees(lon), alt_km


def look_angles(
    site_ecef_km: ArrayLike,
    site_lat_deg: ArrayLike,
    site_lon_deg: ArrayLike,
    target_ecef_km: ArrayLike,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Elevation, azimuth and slant range of targets seen from ground sites.

    The local horizon is the plane normal to the geodetic (WGS84) vertical. No refraction.

    Parameters
    ----------
    site_ecef_km : array_like, shape (..., 3)
        Site positions in km, Earth-fixed (from :func:`geodetic_to_ecef_km`).
    site_lat_deg, site_lon_deg : array_like, shape (...)
        Geodetic latitude and longitude of the sites in degrees.
    target_ecef_km : array_like, shape (..., 3)
        Target positions in km, same frame. Site and target shapes broadcast: for ``g`` sites and
        positions ``(n_sat, n_t, 3)`` pass ``site[:, None, None, :]``, ``lat[:, None, None]``,
        ``lon[:, None, None]`` and ``r[None]`` to get ``(g, n_sat, n_t)`` results.

    Returns
    -------
    elevation_deg : numpy.ndarray
        Angle above the local horizon, [-90, 90] deg.
    azimuth_deg : numpy.ndarray
        Clockwise from true north, [0, 360) deg.
    range_km : numpy.ndarray
        Straight-line distance, km.
    """
    d = np.asarray(target_ecef_km, dtype=np.float64) - np.asarray(site_ecef_km, dtype=np.float64)
    lat = np.radians(np.asarray(site_lat_deg, dtype=np.float64))
    lon = np.radians(np.asarray(site_lon_deg, dtype=np.float64))
    sin_lat, cos_lat = np.sin(lat), np.cos(lat)
    sin_lon, cos_lon = np.sin(lon), np.cos(lon)
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
    east = -sin_lon * dx + cos_lon * dy
    north = -sin_lat * cos_lon * dx - sin_lat * sin_lon * dy + cos_lat * dz
    up = cos_lat * cos_lon * dx + cos_lat * sin_lon * dy + sin_lat * dz
    horizontal = np.hypot(east, north)
    elevation_deg = np.degrees(np.arctan2(up, horizontal))
    azimuth_deg = np.mod(np.degrees(np.arctan2(east, north)), 360.0)
    range_km = np.sqrt(horizontal**2 + up**2)
    return elevation_deg, azimuth_deg, range_km
