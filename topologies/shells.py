"""Group real TLE sets into a shell of orbital planes, so that +Grid links can be built on them.

Steps, each a numpy expression over all satellites:

1. Satellites with mean motion above 15.5 rev/day are left out as ``"decaying"`` (below about 415 km;
   freshly launched satellites still at their insertion orbit land here too), those with eccentricity
   above ``max_eccentricity`` as ``"eccentric"``.
2. Inclinations are clustered: sorted, and cut wherever two neighbours differ by more than
   ``inclination_gap_deg``. Real shells are tight (Starlink's 53.05 and 53.22 deg shells are each about
   0.02 deg wide), so a small gap separates shells a fixed-width band would merge. The cluster nearest
   the requested inclination (default: the most populous) is the shell; the rest are ``"other shell"``.
3. Altitudes (SGP4's mean semi-major axis, minus 6378.137 km) within that cluster: the
   densest 1 km bin is the shell's altitude; satellites more than ``altitude_band_km`` below it are
   ``"orbit-raising"`` (a satellite being lowered looks the same in a single TLE), more than that above
   are ``"other shell"``.
4. RAAN at one common time (the latest TLE epoch in the shell) from each satellite's SGP4 state: the
   whole shell precesses together (about -4.5 deg/day at 550 km, 53 deg), so RAANs from TLEs of
   different epochs cannot be compared directly. RAANs are clustered on the circle by cutting at
   gaps wider than ``plane_gap_deg``; planes with fewer than ``min_plane_size`` members are left out as
   ``"sparse plane"``.
5. The shell's ``altitude_km`` is the median orbit radius at the common time minus 6378.137 km (as
   for a Walker shell). Planes are numbered by increasing RAAN starting after the widest gap between planes, so a shell
   that does not go round the whole circle has its seam between the last and the first plane (and is
   marked ``"star"``; one that does is ``"delta"``). Slots are numbered by argument of latitude at the
   common time, starting from the smallest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .constellation import Constellation, Shell
from .errors import ConfigError, TopologyError
from .frames import EARTH_RADIUS_KM
from .propagate import orbit_angles_deg, sgp4_states
from .tle import DECAY_MEAN_MOTION_REV_DAY, TleRecord

log = logging.getLogger(__name__)

REASON_DECAYING = "decaying"
REASON_ECCENTRIC = "eccentric"
REASON_OTHER_SHELL = "other shell"
REASON_ORBIT_RAISING = "orbit-raising"
REASON_SPARSE_PLANE = "sparse plane"
REASON_INVALID = "sgp4 error"


@dataclass(frozen=True)
class ShellCandidate:
    """An inclination cluster found in a TLE set (see :func:`find_shells`).

    Attributes
    ----------
    inclination_deg : float
        Median inclination of the members.
    altitude_km : float
        Altitude of the densest 1 km altitude bin of the members.
    n_sats : int
        Members of the inclination cluster (all altitudes, decaying and eccentric ones excluded).
    n_at_altitude : int
        Members within the altitude band of ``altitude_km``.
    """

    inclination_deg: float
    altitude_km: float
    n_sats: int
    n_at_altitude: int


@dataclass(frozen=True)
class _Elements:
    incl_deg: NDArray[np.float64]
    alt_km: NDArray[np.float64]
    ecc: NDArray[np.float64]
    mean_motion_rev_day: NDArray[np.float64]
    epoch_jd: NDArray[np.float64]


def _elements(records: Sequence[TleRecord]) -> _Elements:
    sats = [r.satrec for r in records]
    return _Elements(
        incl_deg=np.degrees(np.array([s.inclo for s in sats], dtype=np.float64)),
        alt_km=np.array([s.a * s.radiusearthkm for s in sats], dtype=np.float64) - EARTH_RADIUS_KM,
        ecc=np.array([s.ecco for s in sats], dtype=np.float64),
        mean_motion_rev_day=np.array([s.no_kozai for s in sats], dtype=np.float64) * 1440.0 / (2.0 * np.pi),
        epoch_jd=np.array([s.jdsatepoch + s.jdsatepochF for s in sats], dtype=np.float64),
    )


def _clusters_1d(values: NDArray[np.float64], gap: float) -> NDArray[np.int64]:
    """Label of each value: values are sorted and cut where neighbours are more than ``gap`` apart."""
    order = np.argsort(values, kind="stable")
    cuts = np.diff(values[order]) > gap
    labels_sorted = np.concatenate(([0], np.cumsum(cuts)))
    labels = np.empty(values.size, dtype=np.int64)
    labels[order] = labels_sorted
    return labels


def _clusters_circular(angles_deg: NDArray[np.float64], gap_deg: float) -> tuple[NDArray[np.int64], float]:
    """Cluster angles on the circle by cutting gaps wider than ``gap_deg``.

    Returns labels (0.. in increasing angle, starting after the widest gap) and the start angle.
    """
    a = np.mod(angles_deg, 360.0)
    order = np.argsort(a, kind="stable")
    s = a[order]
    gaps = np.diff(np.concatenate((s, [s[0] + 360.0])))  # gaps[i] is between s[i] and s[i+1]
    widest = int(np.argmax(gaps))
    rolled = np.roll(np.arange(s.size), -(widest + 1))  # start right after the widest gap
    cuts = gaps[rolled[:-1]] > gap_deg
    labels_rolled = np.concatenate(([0], np.cumsum(cuts)))
    labels = np.empty(a.size, dtype=np.int64)
    labels[order[rolled]] = labels_rolled
    return labels, float(s[rolled[0]])


def _altitude_mode_km(alt_km: NDArray[np.float64]) -> float:
    """Centre of the densest 1 km altitude bin (the lowest such bin on a tie)."""
    lo = np.floor(alt_km.min())
    counts = np.bincount(np.floor(alt_km - lo).astype(np.int64))
    peak = int(np.argmax(counts))
    return float(lo + peak + 0.5)


def find_shells(
    records: Sequence[TleRecord],
    *,
    inclination_gap_deg: float = 0.05,
    altitude_band_km: float = 10.0,
    max_eccentricity: float = 0.005,
    min_sats: int = 10,
) -> list[ShellCandidate]:
    """List the shells (inclination clusters with at least ``min_sats`` members), most populous first."""
    el = _elements(records)
    ok = (el.mean_motion_rev_day <= DECAY_MEAN_MOTION_REV_DAY) & (el.ecc <= max_eccentricity)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return []
    labels = _clusters_1d(el.incl_deg[idx], inclination_gap_deg)
    out = []
    for lab in np.unique(labels):
        members = idx[labels == lab]
        if members.size < min_sats:
            continue
        mode = _altitude_mode_km(el.alt_km[members])
        n_alt = int((np.abs(el.alt_km[members] - mode) <= altitude_band_km).sum())
        out.append(ShellCandidate(float(np.median(el.incl_deg[members])), mode, int(members.size), n_alt))
    out.sort(key=lambda c: -c.n_at_altitude)
    return out


def constellation_from_tle(
    records: Sequence[TleRecord],
    *,
    inclination_deg: float | None = None,
    altitude_km: float | None = None,
    min_plane_size: int = 5,
    inclination_tolerance_deg: float = 0.5,
    inclination_gap_deg: float = 0.05,
    altitude_band_km: float = 10.0,
    plane_gap_deg: float = 2.0,
    max_eccentricity: float = 0.005,
) -> Constellation:
    """Pick one shell out of real TLE sets and arrange its satellites in planes and slots.

    Parameters
    ----------
    records : sequence of TleRecord
        Element sets, e.g. from :func:`topologies.tle.load_tle`.
    inclination_deg : float, optional
        Wanted inclination; the inclination cluster whose median is nearest is taken, if within
        ``inclination_tolerance_deg``. Default: the cluster with most satellites at its altitude.
    altitude_km : float, optional
        Wanted altitude; the shell is centred here instead of at the densest altitude.
    min_plane_size : int
        Planes with fewer satellites are left out (``"sparse plane"``).
    inclination_tolerance_deg, inclination_gap_deg, altitude_band_km, plane_gap_deg, max_eccentricity
        Clustering thresholds, see the module docstring. ``plane_gap_deg`` must be smaller than the
        RAAN spacing of the planes (5 deg for 72 planes) and larger than the RAAN spread within one.

    Returns
    -------
    Constellation
        One shell named ``tle-<inclination, 2 decimals>deg-<altitude>km``; satellite names ``sat-<plane>-<slot>``;
        ``excluded`` counts the satellites left out by reason, ``excluded_names`` names them.

    Raises
    ------
    ConfigError
        Bad thresholds, or no shell near the requested inclination/altitude (the message lists the
        shells found).
    TopologyError
        A shell is found but no plane has ``min_plane_size`` members.
    """
    if not records:
        raise ConfigError("no TLE records given", key="records")
    if min_plane_size < 1:
        raise ConfigError(f"min_plane_size must be >= 1, got {min_plane_size}", key="min_plane_size")
    for key, value in (
        ("inclination_tolerance_deg", inclination_tolerance_deg),
        ("inclination_gap_deg", inclination_gap_deg),
        ("altitude_band_km", altitude_band_km),
        ("plane_gap_deg", plane_gap_deg),
        ("max_eccentricity", max_eccentricity),
    ):
        if not (np.isfinite(value) and value > 0):
            raise ConfigError(f"{key} must be a positive number, got {value!r}", key=key)

    el = _elements(records)
    n = len(records)
    reason = np.full(n, "", dtype=object)
    reason[el.mean_motion_rev_day > DECAY_MEAN_MOTION_REV_DAY] = REASON_DECAYING
    reason[(reason == "") & (el.ecc > max_eccentricity)] = REASON_ECCENTRIC

    # 2. inclination cluster
    cand = np.flatnonzero(reason == "")
    if cand.size == 0:
        raise ConfigError("every satellite is decaying or eccentric; no shell to build", key="records")
    labels = _clusters_1d(el.incl_deg[cand], inclination_gap_deg)
    uniq, counts = np.unique(labels, return_counts=True)
    medians = np.array([np.median(el.incl_deg[cand[labels == lab]]) for lab in uniq])
    shells_found = ", ".join(
        f"{c.inclination_deg:.2f} deg/{c.altitude_km:.0f} km ({c.n_at_altitude} sats)"
        for c in find_shells(records, inclination_gap_deg=inclination_gap_deg,
                             altitude_band_km=altitude_band_km, max_eccentricity=max_eccentricity)
    )
    if inclination_deg is None:
        chosen = int(np.argmax(counts))
    else:
        big = counts >= min_plane_size
        dist = np.where(big, np.abs(medians - inclination_deg), np.inf)
        chosen = int(np.argmin(dist))
        if not dist[chosen] <= inclination_tolerance_deg:
            raise ConfigError(
                f"no shell within {inclination_tolerance_deg} deg of inclination {inclination_deg} deg; "
                f"shells found: {shells_found or 'none'}",
                key="inclination_deg",
            )
    in_incl = cand[labels == uniq[chosen]]
    reason[np.setdiff1d(cand, in_incl)] = REASON_OTHER_SHELL

    # 3. altitude band
    centre_km = float(altitude_km) if altitude_km is not None else _altitude_mode_km(el.alt_km[in_incl])
    below = in_incl[el.alt_km[in_incl] < centre_km - altitude_band_km]
    above = in_incl[el.alt_km[in_incl] > centre_km + altitude_band_km]
    reason[below] = REASON_ORBIT_RAISING
    reason[above] = REASON_OTHER_SHELL
    members = in_incl[np.abs(el.alt_km[in_incl] - centre_km) <= altitude_band_km]
    if members.size == 0:
        raise ConfigError(
            f"no satellite within {altitude_band_km} km of altitude {centre_km} km at inclination "
            f"{medians[chosen]:.2f} deg; shells found: {shells_found or 'none'}",
            key="altitude_km",
        )

    # 4. RAAN and argument of latitude at a common time, from SGP4 states
    t_jd = float(el.epoch_jd[members].max())
    jd0 = np.floor(t_jd - 0.5) + 0.5
    sat_members = [records[i].satrec for i in members.tolist()]
    valid, r, v = sgp4_states(sat_members, np.array([jd0]), np.array([t_jd - jd0]))
    raan, _incl, u = orbit_angles_deg(r[:, 0], v[:, 0])
    radius_km = np.linalg.norm(r[:, 0], axis=-1)
    bad = ~valid[:, 0]
    reason[members[bad]] = REASON_INVALID
    members, raan, u, radius_km = members[~bad], raan[~bad], u[~bad], radius_km[~bad]
    if members.size == 0:
        raise TopologyError("SGP4 cannot propagate any satellite of the chosen shell to a common time")

    plane_raw, _start = _clusters_circular(raan, plane_gap_deg)
    plane_sizes = np.bincount(plane_raw)
    keep_plane = plane_sizes >= min_plane_size
    sparse = ~keep_plane[plane_raw]
    reason[members[sparse]] = REASON_SPARSE_PLANE
    if not keep_plane.any():
        raise TopologyError(
            f"no plane with at least {min_plane_size} satellites among {members.size} in the shell at "
            f"{medians[chosen]:.2f} deg, {centre_km:.0f} km (largest plane: {int(plane_sizes.max())})"
        )
    # Renumber the kept planes contiguously; the widest gap between *kept* planes sets the seam.
    members, raan, u, plane_raw = members[~sparse], raan[~sparse], u[~sparse], plane_raw[~sparse]
    radius_km = radius_km[~sparse]
    plane_centre = _circular_mean_deg(raan, plane_raw)
    kept_ids = np.flatnonzero(keep_plane)
    centres = plane_centre[kept_ids]
    order_c = np.argsort(centres)
    gaps = np.diff(np.concatenate((centres[order_c], [centres[order_c][0] + 360.0])))
    widest = int(np.argmax(gaps))
    ordered_ids = kept_ids[order_c[np.roll(np.arange(order_c.size), -(widest + 1))]]
    new_number = np.full(plane_sizes.size, -1, dtype=np.int64)
    new_number[ordered_ids] = np.arange(ordered_ids.size)
    plane = new_number[plane_raw]
    n_planes = int(ordered_ids.size)
    median_gap = float(np.median(gaps)) if gaps.size > 1 else 360.0
    pattern = "delta" if n_planes > 1 and gaps[widest] <= 3.0 * median_gap else "star"

    # 5. slots by argument of latitude within each plane
    order = np.lexsort((u, plane))
    plane_sorted = plane[order]
    first_of_plane = np.searchsorted(plane_sorted, np.arange(n_planes))
    slot_sorted = np.arange(order.size) - first_of_plane[plane_sorted]
    members, plane, slot = members[order], plane_sorted, slot_sorted
    per_plane = int(np.bincount(plane).max())

    shell_incl = float(np.median(el.incl_deg[members]))
    # Altitude as a Walker shell states it: mean orbit radius minus the equatorial radius. SGP4's mean
    # semi-major axis (used for banding above) is a few km lower; the satellites spread over the
    # orbit, so the median radius of their states at one time averages the short-period wobble.
    shell_alt = float(np.median(radius_km)) - EARTH_RADIUS_KM
    shell = Shell(
        name=f"tle-{shell_incl:.2f}deg-{shell_alt:.0f}km",
        pattern=pattern,
        altitude_km=shell_alt,
        inclination_deg=shell_incl,
        planes=n_planes,
        sats_per_plane=per_plane,
        phasing=0,
    )
    left_out = np.flatnonzero(reason != "")
    excluded: dict[str, int] = {}
    for why in reason[left_out]:
        excluded[why] = excluded.get(why, 0) + 1
    source = records[0].file
    log.info(
        "%s from %s: %d satellites in %d planes (up to %d per plane, %s); left out: %s",
        shell.name, source, members.size, n_planes, per_plane, pattern,
        ", ".join(f"{k} {v}" for k, v in sorted(excluded.items())) or "none",
    )
    return Constellation(
        names=tuple(f"sat-{p}-{s}" for p, s in zip(plane.tolist(), slot.tolist())),
        satrecs=tuple(records[i].satrec for i in members.tolist()),
        shell=np.zeros(members.size, dtype=np.int32),
        plane=plane.astype(np.int32),
        slot=slot.astype(np.int32),
        shells=(shell,),
        excluded=excluded,
        excluded_names=tuple((records[i].name, str(reason[i])) for i in left_out.tolist()),
        source=source,
    )


def _circular_mean_deg(angles_deg: NDArray[np.float64], labels: NDArray[np.int64]) -> NDArray[np.float64]:
    """Circular mean of the angles of each label, [0, 360) deg, indexed by label."""
    rad = np.radians(angles_deg)
    n_labels = int(labels.max()) + 1
    c = np.bincount(labels, weights=np.cos(rad), minlength=n_labels)
    s = np.bincount(labels, weights=np.sin(rad), minlength=n_labels)
    return np.mod(np.degrees(np.arctan2(s, c)), 360.0)
