"""Sunlight of every satellite at every step: sunlit, penumbra or umbra, under a conical Earth shadow.

The Sun comes from JPL's DE421 ephemeris as the ``de421`` package ships it (Chebyshev coefficients in
``.npy`` files, read here directly; nothing is downloaded), seen from the Earth's centre with light time
and annual aberration, and turned into the TEME frame SGP4's positions are in (IAU 1976 precession,
DE421's own IAU 1980 nutation angles, then the equation of the equinoxes).

The shadow is that of a sphere of 6,378.137 km lit by a sphere of 695,700 km (conical: umbra and
penumbra cones, not a cylinder). Seen from the satellite, let ``a`` be the Sun's angular radius, ``b``
the Earth's and ``c`` the angle between their centres. Then the satellite is

* in umbra when ``c <= b - a`` (the Earth's disc covers the Sun's),
* in penumbra when ``b - a < c < b + a`` (it covers part of it),
* sunlit when ``c >= a + b``.

The Sun's centre crosses the Earth's limb at ``c = b``. Everywhere below geostationary altitude the
Earth's disc is far larger than the Sun's, so there is no antumbra (annular) case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import ConfigError
from .frames import EARTH_RADIUS_KM

if TYPE_CHECKING:
    from .propagate import Ephemeris

FloatArray = NDArray[np.float64]

#: Nominal solar radius, km (IAU 2015 Resolution B3).
SUN_RADIUS_KM = 695_700.0
#: Speed of light, km/s.
C_KM_S = 299_792.458
#: TT - UTC, s: 37 leap seconds (since 2017-01-01) + 32.184. The Sun moves 0.04 arcsec/s along the
#: ecliptic, so a leap second more or less (dates before 2017) shifts it by 0.04 arcsec: ~1 ms of
#: eclipse timing. TDB - TT (below 2 ms) is left out for the same reason.
TT_MINUS_UTC_S = 69.184
#: Per-step sunlight codes of :func:`sunlight_states`.
SUNLIT, PENUMBRA, UMBRA = 0, 1, 2
#: Code where SGP4 could not propagate the satellite.
NO_STATE = 255
#: Arcseconds to radians.
_AS_RAD = math.pi / (180.0 * 3600.0)


@dataclass(frozen=True)
class _Series:
    """One body's Chebyshev coefficients: sets of shape (n_sets, n_axes, n_coeff) over equal spans."""

    coeff: FloatArray
    jd_start: float
    jd_end: float

    def __call__(self, jd_tdb: FloatArray) -> FloatArray:
        n_sets, _n_axes, n_coeff = self.coeff.shape
        span = (self.jd_end - self.jd_start) / n_sets
        if np.any(jd_tdb < self.jd_start) or np.any(jd_tdb > self.jd_end):
            raise ConfigError(f"time outside DE421's span (JD {self.jd_start:.1f} to {self.jd_end:.1f}, "
                              "years 1900 to 2050)", key="start")
        index, offset = np.divmod(jd_tdb - self.jd_start, span)
        index = np.minimum(index.astype(np.int64), n_sets - 1)
        offset = jd_tdb - self.jd_start - index * span
        x = 2.0 * offset / span - 1.0  # in [-1, 1] over the set's span
        t = np.empty((n_coeff, x.size))
        t[0] = 1.0
        t[1] = x
        for k in range(2, n_coeff):
            t[k] = 2.0 * x * t[k - 1] - t[k - 2]
        # (n_t, n_axes): sum over coefficients of c[set(t), axis, k] * T_k(x(t))
        return np.einsum("tak,kt->ta", self.coeff[index], t)


@lru_cache(maxsize=1)
def _de421() -> dict[str, _Series | float]:
    try:
        import de421  # type: ignore[import-untyped]  # de421 ships no type hints or stubs
    except ImportError:
        raise ConfigError("the de421 package (JPL's DE421 ephemeris) is not installed: pip install de421") from None
    base = Path(de421.__file__).parent
    constants = np.load(base / "constants.npy", allow_pickle=False)
    const = {bytes(n).decode(): float(v) for n, v in zip(constants["name"], constants["value"], strict=True)}
    out: dict[str, _Series | float] = {"emrat": const["EMRAT"]}
    for body in ("sun", "earthmoon", "moon", "nutations"):
        out[body] = _Series(np.load(base / f"jpl-{body}.npy", allow_pickle=False), const["jalpha"],
                            const["jomega"])
    return out


def _series(name: str) -> _Series:
    s = _de421()[name]
    assert isinstance(s, _Series)
    return s


def _earth_bary_km(jd_tdb: FloatArray) -> FloatArray:
    """Earth's barycentric position (ICRF, km): DE421 gives the Earth-Moon barycentre and the geocentric Moon."""
    emrat = _de421()["emrat"]
    assert isinstance(emrat, float)
    return _series("earthmoon")(jd_tdb) - _series("moon")(jd_tdb) / (1.0 + emrat)


def _rot(axis: int, angle_rad: FloatArray) -> FloatArray:
    """Rotations of the coordinate frame (passive) by ``angle_rad`` about x, y or z, shape (n, 3, 3)."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    m = np.zeros((np.size(angle_rad), 3, 3))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    m[:, axis, axis] = 1.0
    m[:, i, i] = c
    m[:, j, j] = c
    m[:, i, j] = s
    m[:, j, i] = -s
    return m


def icrf_to_teme(jd_tt: FloatArray) -> FloatArray:
    """Rotation matrices from ICRF (GCRS axes) to TEME at TT Julian dates, shape (n_t, 3, 3).

    IAU 1976 precession (Lieske et al. 1977), nutation from DE421's IAU 1980 angles, then about the
    true pole by the equation of the equinoxes to the mean equinox (Vallado et al. 2006, AIAA 2006-6753,
    the TEME of SGP4). The frame bias (23 mas) is left out: 0.4 ms of eclipse timing.
    """
    t = (jd_tt - 2451545.0) / 36525.0
    zeta = (2306.2181 * t + 0.30188 * t**2 + 0.017998 * t**3) * _AS_RAD
    z = (2306.2181 * t + 1.09468 * t**2 + 0.018203 * t**3) * _AS_RAD
    theta = (2004.3109 * t - 0.42665 * t**2 - 0.041833 * t**3) * _AS_RAD
    eps0 = (84381.448 - 46.8150 * t - 0.00059 * t**2 + 0.001813 * t**3) * _AS_RAD
    nut = _series("nutations")(jd_tt)  # (n_t, 2): dpsi, deps in radians
    dpsi, deps = nut[:, 0], nut[:, 1]
    precession = _rot(2, -z) @ _rot(1, theta) @ _rot(2, -zeta)
    nutation = _rot(0, -(eps0 + deps)) @ _rot(2, -dpsi) @ _rot(0, eps0)
    # TEME's x axis is the mean equinox seen along the true equator: right ascensions from it are
    # smaller than from the true equinox by the equation of the equinoxes, dpsi cos(eps0)
    return _rot(2, dpsi * np.cos(eps0)) @ nutation @ precession


def sun_teme_km(jd: ArrayLike, fr: ArrayLike) -> FloatArray:
    """Apparent geocentric position of the Sun in TEME, km.

    Parameters
    ----------
    jd, fr : array_like, shape (n_t,)
        UTC Julian dates split as SGP4 takes them (:func:`topologies.propagate.julian_date`).

    Returns
    -------
    numpy.ndarray, shape (n_t, 3)
        Where the Sun's light seen at the Earth's centre at that time comes from (light time and
        annual aberration applied), in the TEME frame of SGP4's satellite positions.

    Raises
    ------
    ConfigError
        A time outside DE421's span (1900 to 2050), or the de421 package missing.
    """
    jd_a = np.atleast_1d(np.asarray(jd, dtype=np.float64))
    fr_a = np.atleast_1d(np.asarray(fr, dtype=np.float64))
    # the two parts kept apart until here; one float64 JD still resolves 40 us
    jd_tt = jd_a + (fr_a + TT_MINUS_UTC_S / 86_400.0)
    earth = _earth_bary_km(jd_tt)
    sun_series = _series("sun")
    light_s = np.full(jd_tt.shape, 499.0)
    for _ in range(3):  # light time converges to well under a microsecond in three rounds
        sun = sun_series(jd_tt - light_s / 86_400.0)
        light_s = np.linalg.norm(sun - earth, axis=-1) / C_KM_S
    p = sun - earth
    dist = np.linalg.norm(p, axis=-1, keepdims=True)
    u = p / dist
    # Earth's barycentric velocity by a central difference over +-30 s (error ~ v (w dt)^2 / 6, 1e-13 v)
    v_km_s = (_earth_bary_km(jd_tt + 30.0 / 86_400.0) - _earth_bary_km(jd_tt - 30.0 / 86_400.0)) / 60.0
    beta = v_km_s / C_KM_S
    # annual aberration to first order in v/c (the second order is 1e-8 rad: 0.1 ms of timing)
    u_app = u + beta - u * np.sum(u * beta, axis=-1, keepdims=True)
    u_app /= np.linalg.norm(u_app, axis=-1, keepdims=True)
    return np.einsum("tij,tj->ti", icrf_to_teme(jd_tt), u_app * dist)


def sun_right_ascension_deg(when: datetime) -> float:
    """The Sun's apparent right ascension in TEME at ``when`` (UTC), [0, 360) deg."""
    from .propagate import julian_date

    jd, fr = julian_date(when)
    s = sun_teme_km([jd], [fr])[0]
    return math.degrees(math.atan2(s[1], s[0])) % 360.0


def shadow_angles(r_km: FloatArray, sun_km: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Angles that decide the shadow, seen from each satellite.

    Parameters
    ----------
    r_km : numpy.ndarray, shape (..., 3)
        Satellite positions (TEME, km).
    sun_km : numpy.ndarray, broadcastable to ``r_km``
        Sun positions (TEME, km) at the same times.

    Returns
    -------
    sep_rad, sun_rad, earth_rad : numpy.ndarray, shape (...)
        Angle between the Earth's and the Sun's centres; the Sun's and the Earth's angular radii.
    """
    to_sun = sun_km - r_km
    d_sun = np.linalg.norm(to_sun, axis=-1)
    d_earth = np.linalg.norm(r_km, axis=-1)
    cos_sep = -np.sum(r_km * to_sun, axis=-1) / (d_earth * d_sun)
    sep = np.arccos(np.clip(cos_sep, -1.0, 1.0))
    sun_rad = np.arcsin(np.minimum(SUN_RADIUS_KM / d_sun, 1.0))
    earth_rad = np.arcsin(np.minimum(EARTH_RADIUS_KM / d_earth, 1.0))
    return sep, sun_rad, earth_rad


def _margins(r_km: FloatArray, sun_km: FloatArray) -> FloatArray:
    """Signed distances (rad) to the three boundaries, shape (3, ...): penumbra, Sun centre, umbra.

    Each is positive on the sunlit side: ``c - (a + b)``, ``c - b``, ``c - (b - a)``.
    """
    sep, a, b = shadow_angles(r_km, sun_km)
    return np.stack((sep - (a + b), sep - b, sep - (b - a)))


def sunlight_states(eph: Ephemeris, sun_km: FloatArray | None = None, chunk: int = 512) -> NDArray[np.uint8]:
    """Sunlight of every satellite at every step.

    Parameters
    ----------
    eph : Ephemeris
        The propagated constellation (TEME positions, shape (n_sat, n_t, 3)).
    sun_km : numpy.ndarray, shape (n_t, 3), optional
        The Sun at the ephemeris' steps, if already computed (:func:`sun_teme_km`).
    chunk : int
        Satellites per block, which bounds the temporary arrays (about 200 bytes per satellite-step).

    Returns
    -------
    numpy.ndarray, shape (n_sat, n_t), uint8
        :data:`SUNLIT`, :data:`PENUMBRA` or :data:`UMBRA`; :data:`NO_STATE` where SGP4 failed.
    """
    sun = sun_teme_km(eph.jd, eph.fr) if sun_km is None else sun_km
    n_sat, n_t = eph.valid.shape
    out = np.full((n_sat, n_t), NO_STATE, np.uint8)
    for lo in range(0, n_sat, chunk):
        r = eph.r_teme_km[lo:lo + chunk]
        pen, _centre, umb = _margins(r, sun[None, :, :])
        state = np.where(umb <= 0.0, UMBRA, np.where(pen < 0.0, PENUMBRA, SUNLIT)).astype(np.uint8)
        out[lo:lo + chunk] = np.where(eph.valid[lo:lo + chunk], state, NO_STATE)
    return out


#: Boundary names, in the order of :func:`_margins`' first axis.
BOUNDARIES = ("penumbra", "centre", "umbra")


@dataclass(frozen=True)
class Crossings:
    """Times at which satellites cross the shadow's boundaries, refined between steps.

    Attributes
    ----------
    sat : numpy.ndarray, shape (n,), int
        Satellite index.
    boundary : numpy.ndarray, shape (n,), int
        Index into :data:`BOUNDARIES`: 0 the penumbra's outer edge (first contact), 1 the Sun's centre
        on the Earth's limb, 2 the umbra's edge (Sun wholly hidden).
    entering : numpy.ndarray, shape (n,), bool
        True going into the shadow (sunlit side to dark side), False coming out.
    time_s : numpy.ndarray, shape (n,), float
        Seconds since the ephemeris' start; sorted by satellite, then time.
    """

    sat: NDArray[np.int64]
    boundary: NDArray[np.int64]
    entering: NDArray[np.bool_]
    time_s: FloatArray


def shadow_crossings(eph: Ephemeris, sun_km: FloatArray | None = None, iterations: int = 30,
                     chunk: int = 256) -> Crossings:
    """Every crossing of the penumbra, Sun-centre and umbra boundaries, to well under a millisecond.

    A crossing is found as a sign change of the boundary's margin between two steps, then bisected on
    a cubic Hermite curve through the satellite's positions and velocities at both steps (0.3 m off
    the SGP4 orbit for 60 s steps in LEO; the error goes as the step to the fourth power) with the Sun
    interpolated linearly (it moves 0.04 arcsec/s). A crossing within a step where SGP4 failed at
    either end is not reported.

    Parameters
    ----------
    eph : Ephemeris
    sun_km : numpy.ndarray, shape (n_t, 3), optional
        The Sun at the ephemeris' steps (:func:`sun_teme_km`).
    iterations : int
        Bisection rounds; each halves the time uncertainty (30 on 60 s steps: 56 ns).
    chunk : int
        Satellites per block, which bounds the temporary arrays.

    Returns
    -------
    Crossings
    """
    sun = sun_teme_km(eph.jd, eph.fr) if sun_km is None else sun_km
    parts = [_crossings_block(eph.r_teme_km[lo:lo + chunk], eph.v_teme_km_s[lo:lo + chunk],
                              eph.valid[lo:lo + chunk], sun, eph.step_s, iterations, lo)
             for lo in range(0, eph.valid.shape[0], chunk)]
    if not parts:
        parts = [(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0))]
    sat, bnd, entering, time_s = (np.concatenate(x) for x in zip(*parts, strict=True))
    order = np.lexsort((time_s, sat))
    return Crossings(sat[order], bnd[order], entering[order], time_s[order])


def _crossings_block(r: FloatArray, v: FloatArray, valid: NDArray[np.bool_], sun: FloatArray, h: float,
                     iterations: int, first_sat: int
                     ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_], FloatArray]:
    margins = _margins(r, sun[None, :, :])  # (3, n_sat, n_t)
    ok = valid[:, :-1] & valid[:, 1:]
    lit0 = margins[:, :, :-1] > 0.0
    lit1 = margins[:, :, 1:] > 0.0
    bnd, sat, step = np.nonzero((lit0 != lit1) & ok[None])
    entering = lit0[bnd, sat, step]
    r0, r1 = r[sat, step], r[sat, step + 1]
    v0, v1 = v[sat, step] * h, v[sat, step + 1] * h  # dr/dx for x = (t - t_step) / h
    s0, s1 = sun[step], sun[step + 1]
    lo = np.zeros(sat.size)
    hi = np.ones(sat.size)
    rows = np.arange(sat.size)
    for _ in range(iterations):
        x = 0.5 * (lo + hi)
        x2, x3 = x * x, x * x * x
        pos = ((2 * x3 - 3 * x2 + 1)[:, None] * r0 + (x3 - 2 * x2 + x)[:, None] * v0
               + (-2 * x3 + 3 * x2)[:, None] * r1 + (x3 - x2)[:, None] * v1)
        s = s0 + x[:, None] * (s1 - s0)
        m = _margins(pos, s)[bnd, rows]
        # keep the half whose ends differ in sign: the crossing is after x while x is on the start's side
        after = (m > 0.0) == entering
        lo = np.where(after, x, lo)
        hi = np.where(after, hi, x)
    time_s = (step + 0.5 * (lo + hi)) * h
    return (sat.astype(np.int64) + first_sat, bnd.astype(np.int64), entering, time_s)


def sunlight_summary(eph: Ephemeris, sun_km: FloatArray | None = None,
                     states: NDArray[np.uint8] | None = None) -> dict[str, float | int]:
    """What ``satnetem plan`` prints about sunlight: shares of satellite-time and eclipse counts.

    Parameters
    ----------
    eph : Ephemeris
    sun_km : numpy.ndarray, shape (n_t, 3), optional
        The Sun at the ephemeris' steps, if already computed.
    states : numpy.ndarray, shape (n_sat, n_t), optional
        :func:`sunlight_states`, if already computed.

    Returns
    -------
    dict
        ``umbra_pct``, ``penumbra_pct``: shares of valid satellite-steps; ``eclipses``: umbra entries
        within the plan (refined between steps), ``sats_eclipsed``: satellites with any step in umbra
        or penumbra; ``longest_umbra_s``: the longest umbra seen whole within the plan (0 if none).
    """
    sun = sun_teme_km(eph.jd, eph.fr) if sun_km is None else sun_km
    states = sunlight_states(eph, sun) if states is None else states
    valid = states != NO_STATE
    n_valid = max(int(valid.sum()), 1)
    cross = shadow_crossings(eph, sun, iterations=20)
    umbra = cross.boundary == BOUNDARIES.index("umbra")
    longest = 0.0
    sats_u, t_u, in_u = cross.sat[umbra], cross.time_s[umbra], cross.entering[umbra]
    whole = in_u[:-1] & ~in_u[1:] & (sats_u[:-1] == sats_u[1:])  # an entry followed by its exit
    if whole.any():
        longest = float((t_u[1:] - t_u[:-1])[whole].max())
    return {
        "umbra_pct": 100.0 * float((states == UMBRA).sum()) / n_valid,
        "penumbra_pct": 100.0 * float((states == PENUMBRA).sum()) / n_valid,
        "eclipses": int(in_u.sum()),
        "sats_eclipsed": int(((states == UMBRA) | (states == PENUMBRA)).any(axis=1).sum()),
        "longest_umbra_s": longest,
    }
