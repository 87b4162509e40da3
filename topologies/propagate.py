"""Propagate a constellation with SGP4 over a time grid, all satellites and times in one call.

The work is done by ``sgp4.api.SatrecArray.sgp4`` (the compiled Vallado C++ SGP4 when available),
which returns ``(n_sat, n_t, 3)`` arrays; a satellite SGP4 cannot propagate at some time (decayed,
eccentricity out of range, ...) is marked invalid in a mask rather than raising.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from sgp4.api import SatrecArray, jday

from .errors import ConfigError
from .frames import ecef_to_geodetic, teme_to_ecef

if TYPE_CHECKING:
    from .constellation import Constellation

log = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]


def as_utc(when: datetime) -> datetime:
    """Return ``when`` as an aware UTC datetime; a naive datetime is taken to be UTC already."""
    if not isinstance(when, datetime):
        raise ConfigError(f"expected a datetime, got {type(when).__name__}", key="start")
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def julian_date(when: datetime) -> tuple[float, float]:
    """Julian date of a UTC time, split as SGP4 wants it.

    Returns
    -------
    jd : float
        Whole part, ending in .5 (the preceding midnight).
    fr : float
        Fraction of the day since that midnight, [0, 1).
    """
    t = as_utc(when)
    jd, fr = jday(t.year, t.month, t.day, t.hour, t.minute, t.second + t.microsecond * 1e-6)
    return float(jd), float(fr)


def datetime_from_jd(jd: float, fr: float) -> datetime:
    """Inverse of :func:`julian_date` (to the microsecond), an aware UTC datetime."""
    base = datetime(2000, 1, 1, 12, tzinfo=UTC)  # JD 2451545.0
    days = (jd - 2451545.0) + fr
    return base + timedelta(microseconds=round(days * 86_400e6))


def sgp4_states(
    satrecs: Sequence[Any], jd: NDArray[np.float64], fr: NDArray[np.float64]
) -> tuple[NDArray[np.bool_], FloatArray, FloatArray]:
    """Run SGP4 for every satellite at every time.

    Parameters
    ----------
    satrecs : sequence of sgp4.api.Satrec, length n_sat
    jd, fr : numpy.ndarray, shape (n_t,)
        Julian dates (UTC) split in two parts.

    Returns
    -------
    valid : numpy.ndarray, shape (n_sat, n_t), bool
        False where SGP4 reported an error (its error code is nonzero).
    r_teme_km : numpy.ndarray, shape (n_sat, n_t, 3)
        Position in km, TEME; NaN where not valid.
    v_teme_km_s : numpy.ndarray, shape (n_sat, n_t, 3)
        Velocity in km/s, TEME; NaN where not valid.
    """
    jd_a = np.ascontiguousarray(jd, dtype=np.float64)
    fr_a = np.ascontiguousarray(fr, dtype=np.float64)
    if len(satrecs) == 0:
        empty = np.zeros((0, jd_a.size, 3))
        return np.zeros((0, jd_a.size), dtype=bool), empty, empty.copy()
    errors, r, v = SatrecArray(list(satrecs)).sgp4(jd_a, fr_a)
    valid = errors == 0
    if not valid.all():
        r[~valid] = np.nan
        v[~valid] = np.nan
        log.debug("SGP4 failed for %d of %d satellite-times", int((~valid).sum()), valid.size)
    return valid, r, v


def orbit_angles_deg(r_km: FloatArray, v_km_s: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Osculating RAAN, inclination and argument of latitude from inertial position and velocity.

    Parameters
    ----------
    r_km, v_km_s : numpy.ndarray, shape (..., 3)
        Position and velocity in an inertial frame (TEME).

    Returns
    -------
    raan_deg, inclination_deg, arg_latitude_deg : numpy.ndarray, shape (...)
        RAAN and argument of latitude in [0, 360), inclination in [0, 180]. NaN in gives NaN out.
    """
    h = np.cross(r_km, v_km_s)  # orbit normal
    h_norm = np.linalg.norm(h, axis=-1)
    node = np.stack((-h[..., 1], h[..., 0]), axis=-1)  # z x h (x, y; z is 0): towards the ascending node
    raan = np.mod(np.degrees(np.arctan2(h[..., 0], -h[..., 1])), 360.0)
    incl = np.degrees(np.arccos(np.clip(h[..., 2] / h_norm, -1.0, 1.0)))
    # |r| cos u = node.r / |node| and |r| sin u = r_z / sin i = r_z |h| / |node|: atan2 needs no |node|.
    cos_part = node[..., 0] * r_km[..., 0] + node[..., 1] * r_km[..., 1]
    sin_part = r_km[..., 2] * h_norm
    u = np.mod(np.degrees(np.arctan2(sin_part, cos_part)), 360.0)
    return raan, incl, u


@dataclass(frozen=True)
class Ephemeris:
    """Positions and velocities of every satellite on a regular time grid.

    Attributes
    ----------
    start : datetime
        Time of step 0, aware UTC.
    step_s : float
        Time between steps, s.
    n_steps : int
        Number of time steps n_t.
    jd, fr : numpy.ndarray, shape (n_t,)
        Julian date (UTC) of each step, split as SGP4 wants.
    r_teme_km : numpy.ndarray, shape (n_sat, n_t, 3)
    v_teme_km_s : numpy.ndarray, shape (n_sat, n_t, 3)
    r_ecef_km : numpy.ndarray, shape (n_sat, n_t, 3)
        Earth-fixed positions (TEME rotated by GMST; see :mod:`topologies.frames`).
    valid : numpy.ndarray, shape (n_sat, n_t), bool
        False where SGP4 returned an error; positions there are NaN.
    """

    start: datetime
    step_s: float
    n_steps: int
    jd: FloatArray
    fr: FloatArray
    r_teme_km: FloatArray
    v_teme_km_s: FloatArray
    r_ecef_km: FloatArray
    valid: NDArray[np.bool_]

    def __post_init__(self) -> None:
        n_t = self.n_steps
        if self.jd.shape != (n_t,) or self.fr.shape != (n_t,):
            raise ConfigError(f"jd and fr must have shape ({n_t},)", key="jd")
        n_sat = self.valid.shape[0] if self.valid.ndim == 2 else -1
        for key in ("r_teme_km", "v_teme_km_s", "r_ecef_km"):
            if getattr(self, key).shape != (n_sat, n_t, 3):
                raise ConfigError(f"{key} must have shape ({n_sat}, {n_t}, 3)", key=key)
        if self.valid.shape != (n_sat, n_t):
            raise ConfigError(f"valid must have shape (n_sat, {n_t})", key="valid")

    @property
    def n_sats(self) -> int:
        """Number of satellites."""
        return int(self.valid.shape[0])

    def time_of(self, step: int) -> datetime:
        """UTC time of step ``step``."""
        return self.start + timedelta(seconds=step * self.step_s)

    def geodetic(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        """WGS84 latitude_deg, longitude_deg, altitude_km of every satellite, each (n_sat, n_t)."""
        return ecef_to_geodetic(self.r_ecef_km)


def propagate(constellation: Constellation, start: datetime, step_s: float, n_steps: int) -> Ephemeris:
    """Propagate every satellite of a constellation on a regular time grid.

    Parameters
    ----------
    constellation : Constellation
    start : datetime
        Time of the first step (UTC; naive is taken as UTC).
    step_s : float
        Step in seconds, > 0.
    n_steps : int
        Number of steps, >= 1.

    Returns
    -------
    Ephemeris
    """
    if not (isinstance(step_s, (int, float)) and step_s > 0 and np.isfinite(step_s)):
        raise ConfigError(f"step_s must be a positive number of seconds, got {step_s!r}", key="step_s")
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise ConfigError(f"n_steps must be an integer >= 1, got {n_steps!r}", key="n_steps")
    start_utc = as_utc(start)
    jd0, fr0 = julian_date(start_utc)
    jd = np.full(int(n_steps), jd0)
    fr = fr0 + np.arange(int(n_steps), dtype=np.float64) * (float(step_s) / 86_400.0)
    valid, r, v = sgp4_states(constellation.satrecs, jd, fr)
    r_ecef = teme_to_ecef(r, jd, fr)
    if not valid.all():
        bad = np.flatnonzero(~valid.all(axis=1))
        log.info(
            "%d of %d satellites have invalid SGP4 states (first: %s)",
            bad.size,
            valid.shape[0],
            constellation.names[bad[0]],
        )
    return Ephemeris(
        start=start_utc,
        step_s=float(step_s),
        n_steps=int(n_steps),
        jd=jd,
        fr=fr,
        r_teme_km=r,
        v_teme_km_s=v,
        r_ecef_km=r_ecef,
        valid=valid,
    )
