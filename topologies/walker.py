"""Synthetic Walker constellations (delta and star), built as SGP4 satellites.

Every satellite is made with ``Satrec.sgp4init`` (WGS72 constants, drag term 0, circular orbit), so
Walker and real TLE constellations go through the same propagator and the same code downstream.

Geometry of a shell with P planes of S satellites and phasing F:

* plane ``p`` has RAAN ``p * 360 / P`` deg (delta) or ``p * 180 / P`` deg (star);
* slot ``s`` of plane ``p`` has argument of latitude ``s * 360 / S + p * F * 360 / (P * S)`` deg at
  the epoch (mean anomaly, with argument of perigee 0).

A shell with ``raan_span_deg`` spreads its planes over that span instead of 360 or 180 deg. A shell with
``ltan_h`` is sun-synchronous: its inclination makes the J2 nodal precession follow the mean Sun
(:func:`sso_inclination_deg`) and every RAAN above is counted from the Sun's right ascension at the
epoch plus ``(ltan_h - 12) * 15`` deg, so plane 0 crosses the equator northwards at that local time.

The star pattern here is the idealised one: planes evenly spread over 180 deg, so the seam (between the
last plane and the first, which move in opposite directions) is as wide as the other gaps. Real
systems such as Iridium narrow the co-rotating gaps and widen the seam; that is not modelled.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import datetime

import numpy as np
from sgp4.api import WGS72, Satrec

from .constellation import Constellation, Shell
from .errors import ConfigError
from .frames import EARTH_RADIUS_KM
from .propagate import as_utc, julian_date, sgp4_states
from .sunlight import sun_right_ascension_deg

log = logging.getLogger(__name__)

#: WGS72 gravitational parameter (what SGP4 uses), km^3/s^2.
MU_WGS72_KM3_S2 = 398600.8
#: Julian date of the SGP4 epoch origin, 1949-12-31 00:00 UTC.
JD_SGP4_EPOCH_ORIGIN = 2433281.5
#: Largest satellite number a TLE (Alpha-5) can carry.
MAX_SATNUM = 339_999
#: WGS72 second zonal harmonic and equatorial radius (km), the constants SGP4 propagates with.
J2_WGS72 = 0.001082616
RADIUS_WGS72_KM = 6378.135
#: Mean motion of the mean Sun in right ascension: 360 deg per tropical year of 365.2422 days, rad/s.
SUN_MEAN_RATE_RAD_S = 2.0 * math.pi / (365.2422 * 86_400.0)


def sso_inclination_deg(altitude_km: float) -> float:
    """Inclination of the circular sun-synchronous orbit at ``altitude_km``, deg.

    The first-order secular J2 regression of the node of a circular orbit,
    ``dRAAN/dt = -3/2 n J2 (R / a)^2 cos i`` with ``n = sqrt(mu / a^3)``, set equal to the mean
    Sun's 360 deg per tropical year (Boain, "A-B-Cs of sun-synchronous orbit mission design",
    AAS 04-108, 2004), so ``cos i = -2/3 dRAAN/dt a^(7/2) / (J2 R^2 sqrt(mu))``. WGS72 constants, as
    SGP4; ``a`` = 6378.137 km + altitude, the mean radius Walker shells are built at. SGP4 then
    moves the node 0.09 % slower than the Sun (J4 and its mean-element terms): 0.3 deg a year.

    Raises
    ------
    ConfigError
        Above about 5,970 km no inclination is fast enough (|cos i| would exceed 1).
    """
    a_km = EARTH_RADIUS_KM + altitude_km
    cos_i = (-2.0 / 3.0 * SUN_MEAN_RATE_RAD_S * a_km**3.5
             / (J2_WGS72 * RADIUS_WGS72_KM**2 * math.sqrt(MU_WGS72_KM3_S2)))
    if not -1.0 <= cos_i <= 1.0:
        raise ConfigError(f"no sun-synchronous circular orbit at {altitude_km} km (needs cos i = {cos_i:.3f})",
                          key="altitude_km")
    return math.degrees(math.acos(cos_i))


#: Shells of published constellations.
#:
#: ``starlink-shell1``: SpaceX's first shell as filed (72 planes x 22 at 550 km, 53 deg). SpaceX does
#: not publish a Walker phasing; F = 65 is our choice: among all F in 0..71 it gives the largest
#: minimum distance between any two satellites (about 71 km, circular two-body orbits, scanned over one
#: slot period), where F = 0 puts satellites of crossing planes on top of each other.
#: ``kuiper-630``: Amazon Kuiper's 630 km shell (34 x 34, 51.9 deg); F = 7 by the same criterion
#: (about 78 km).
#: ``telesat-polar``: Telesat Lightspeed's polar shell (27 planes x 13 at 1015 km, 98.98 deg). Its
#: near-polar retrograde planes all cross near the poles, so their RAANs span 180 deg, not 360: a star
#: pattern. F = 13 staggers adjacent planes by about half a slot, as Iridium does.
#: ``iridium``: Iridium (6 planes x 11 at 780 km, 86.4 deg), star, F = 3 (half-slot stagger).
#: ``dawn-dusk``: our own sun-synchronous shell for compute in orbit (issue 14), not a filed system:
#: 4 planes x 24 at 650 km (97.99 deg), ascending at 06:00 local time, the planes 2 deg of RAAN apart
#: (8 min of local time; star, so no laser link across the 8 deg gap back to plane 0), F = 1. Such an
#: orbit skirts the terminator: on the 21st of each month of 2026 it was in no shadow from February to
#: October, and in umbra or penumbra for 16 to 21 % of the day from November to January (an 18:00
#: shell has the opposite seasons: shadow from May to July).
PRESETS: dict[str, Shell] = {
    "starlink-shell1": Shell("starlink-shell1", "delta", 550.0, 53.0, 72, 22, 65),
    "kuiper-630": Shell("kuiper-630", "delta", 630.0, 51.9, 34, 34, 7),
    "telesat-polar": Shell("telesat-polar", "star", 1015.0, 98.98, 27, 13, 13),
    "iridium": Shell("iridium", "star", 780.0, 86.4, 6, 11, 3),
    "dawn-dusk": Shell("dawn-dusk", "star", 650.0, sso_inclination_deg(650.0), 4, 24, 1, ltan_h=6.0,
                       raan_span_deg=8.0),
}


def preset(name: str) -> Shell:
    """The preset shell called ``name``; an unknown name is a ConfigError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown Walker preset {name!r}; known: {', '.join(sorted(PRESETS))}", key="preset"
        ) from None


def _satrec(satnum: int, epoch_days: float, incl_rad: float, raan_rad: float, mean_anomaly_rad: float,
            no_kozai_rad_min: float) -> Satrec:
    sat = Satrec()
    sat.sgp4init(
        WGS72, "i", satnum, epoch_days,
        0.0,  # bstar: no drag, the orbit keeps its altitude
        0.0, 0.0,  # ndot, nddot (unused by SGP4 itself)
        0.0,  # eccentricity
        0.0,  # argument of perigee
        incl_rad, mean_anomaly_rad, no_kozai_rad_min, raan_rad,
    )
    return sat


def _mean_motion_for_altitude(shell: Shell, epoch_days: float, jd_epoch: float) -> float:
    """Kozai mean motion (rad/min) whose SGP4 orbit has mean radius EARTH_RADIUS_KM + altitude_km.

    Two-body n = sqrt(mu / a^3) puts the SGP4 orbit off by a few km (J2 terms in SGP4's mean elements),
    so the radius is measured on one probe satellite over one orbit and n is corrected (3 rounds,
    each cutting the error by about 100x).
    """
    target_km = EARTH_RADIUS_KM + shell.altitude_km
    n_rad_min = math.sqrt(MU_WGS72_KM3_S2 / target_km**3) * 60.0
    incl = math.radians(shell.inclination_deg)
    for _ in range(3):
        probe = _satrec(1, epoch_days, incl, 0.0, 0.0, n_rad_min)
        period_days = 2.0 * math.pi / n_rad_min / 1440.0
        fr = np.linspace(0.0, period_days, 64, endpoint=False)
        valid, r, _v = sgp4_states([probe], np.full(fr.shape, jd_epoch), fr)
        if not valid.all():
            raise ConfigError(f"SGP4 cannot propagate a circular orbit at {shell.altitude_km} km",
                              key="altitude_km")
        mean_r_km = float(np.linalg.norm(r[0], axis=-1).mean())
        n_rad_min *= (mean_r_km / target_km) ** 1.5
    return n_rad_min


def walker_constellation(shells: Sequence[Shell], epoch: datetime, source: str | None = None) -> Constellation:
    """Build a Walker constellation of one or more shells.

    Parameters
    ----------
    shells : sequence of Shell
        Shells to build; their ``pattern``, ``planes``, ``sats_per_plane`` and ``phasing`` set the
        geometry (see the module docstring).
    epoch : datetime
        Epoch of the elements: the time at which plane 0 has RAAN 0 (or the RAAN its ``ltan_h`` gives)
        and slot 0 of plane 0 is at the ascending node (UTC; naive is taken as UTC).
    source : str, optional
        Recorded as ``Constellation.source``; default ``"walker:<shell names joined by +>"``.

    Returns
    -------
    Constellation
        Satellites ordered by shell, plane, slot; named ``sat-<plane>-<slot>`` for one shell,
        ``sat-<shell>-<plane>-<slot>`` for several.

    Raises
    ------
    ConfigError
        No shells, duplicate shell names, or more satellites than TLE numbers can carry.
    """
    if not shells:
        raise ConfigError("at least one shell is needed", key="shells")
    names_seen = [s.name for s in shells]
    if len(set(names_seen)) != len(names_seen):
        raise ConfigError(f"shell names must be unique, got {names_seen}", key="shells")
    total = sum(s.n_sats for s in shells)
    if total > MAX_SATNUM:
        raise ConfigError(f"{total} satellites exceed the {MAX_SATNUM} a TLE number can carry", key="shells")
    epoch_utc = as_utc(epoch)
    jd, fr = julian_date(epoch_utc)
    epoch_days = (jd - JD_SGP4_EPOCH_ORIGIN) + fr

    names: list[str] = []
    satrecs: list[Satrec] = []
    shell_idx: list[np.ndarray] = []
    plane_idx: list[np.ndarray] = []
    slot_idx: list[np.ndarray] = []
    several = len(shells) > 1
    for k, shell in enumerate(shells):
        n_rad_min = _mean_motion_for_altitude(shell, epoch_days, jd + fr)
        span_deg = shell.raan_span_deg or (360.0 if shell.pattern == "delta" else 180.0)
        raan0_deg = 0.0
        if shell.ltan_h is not None:
            sso_deg = sso_inclination_deg(shell.altitude_km)
            if abs(shell.inclination_deg - sso_deg) > 1e-6:
                raise ConfigError(f"shell {shell.name}: ltan_h makes it sun-synchronous, which at "
                                  f"{shell.altitude_km} km needs inclination {sso_deg:.4f} deg, not "
                                  f"{shell.inclination_deg}", key="inclination_deg")
            raan0_deg = sun_right_ascension_deg(epoch_utc) + (shell.ltan_h - 12.0) * 15.0
        n_planes, per_plane = shell.planes, shell.sats_per_plane
        plane, slot = np.divmod(np.arange(n_planes * per_plane), per_plane)
        raan_deg = raan0_deg + plane * (span_deg / n_planes)
        u_deg = slot * (360.0 / per_plane) + plane * (shell.phasing * 360.0 / (n_planes * per_plane))
        raan_rad = np.radians(np.mod(raan_deg, 360.0))
        u_rad = np.radians(np.mod(u_deg, 360.0))
        incl = math.radians(shell.inclination_deg)
        for i in range(plane.size):  # one sgp4init per satellite: there is no vectorised initialiser
            satrecs.append(_satrec(len(satrecs) + 1, epoch_days, incl, float(raan_rad[i]), float(u_rad[i]),
                                   n_rad_min))
            names.append(f"sat-{k}-{plane[i]}-{slot[i]}" if several else f"sat-{plane[i]}-{slot[i]}")
        shell_idx.append(np.full(plane.size, k))
        plane_idx.append(plane)
        slot_idx.append(slot)
        log.debug("shell %s: %d sats, n = %.6f rad/min", shell.name, plane.size, n_rad_min)
    return Constellation(
        names=tuple(names),
        satrecs=tuple(satrecs),
        shell=np.concatenate(shell_idx),
        plane=np.concatenate(plane_idx),
        slot=np.concatenate(slot_idx),
        shells=tuple(shells),
        excluded={},
        excluded_names=(),
        source=source if source is not None else "walker:" + "+".join(s.name for s in shells),
    )
