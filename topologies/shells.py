"""Group real TLE sets into shells of orbital planes, so that +Grid links can be built on each shell.

Every satellite of the file ends up in exactly one of: a shell's +Grid (shell, plane, slot), or a
left-out *reason*. Steps, each a numpy expression over all satellites (except the neighbour count of
step 2, a loop over sorted windows):

1. Altitude is SGP4's mean semi-major axis minus 6378.137 km. Satellites with mean motion above
   15.5 rev/day (below about 415 km) are *low*; others with eccentricity above ``max_eccentricity``
   are ``"eccentric"``.
2. Density: a satellite is *dense* when at least ``min_batch_sats`` satellites (itself included) lie
   within ``layer_half_width_km`` of its altitude and ``inclination_gap_deg`` of its inclination.
   Satellites launched together and satellites of one operational layer are dense; satellites on
   their way up or down are spread out and are not.
3. Low satellites: dense ones are ``"orbit-raising"`` (a launch batch still parked together near its
   insertion orbit, e.g. ~330 at 43 deg, ~355 km, in the 2026 set); the others ``"decaying"`` (they
   come down one by one). One TLE cannot tell a satellite being raised from one being lowered; the
   batch is the best evidence there is.
4. Layers: the dense satellites above the low limit are cut into clusters where their inclinations
   differ by more than ``inclination_gap_deg`` (real shells are tight: each of Starlink's is about
   0.02 deg wide), then where their altitudes differ by more than ``2 * layer_half_width_km``
   (clustering by gaps, not fixed bins). Each cluster, widened by those margins, is a layer; every
   non-low satellite inside the box is a member.

   One shell per layer, not one per inclination: in the 2026 set the 53.2 deg group spans 459-476 km
   in five layers (459.9, 462.9, 465.4, 470.9 and 475.3 km, each about 0.5 km thick) whose planes
   interleave in RAAN. Taken as one shell (4,139 satellites) their planes chain into 22 "planes"
   of up to 419 satellites; taken apart, the 462.9 km layer alone has 108 planes of up to 31. The layers of one
   inclination drift apart by about 0.01 deg/day of RAAN per km of altitude, so they are distinct
   shells, joined (if at all) by cross-shell links.
5. Planes of a layer, from RAAN at one common time (the latest TLE epoch in the layer) from each
   satellite's SGP4 state: the whole layer precesses together (about -4.5 deg/day at 550 km,
   53 deg), so RAANs from TLEs of different epochs cannot be compared directly. RAANs are clustered
   on the circle by cutting at gaps wider than the layer's own break between within-plane and
   between-plane gaps (at most ``plane_gap_deg``; planes are 0.77 deg apart in the 2026 polar layers,
   2.7 deg in the 43 deg one); planes with fewer than
   ``min_plane_size`` members are left out as ``"sparse plane"`` (satellites drifting to another
   plane, or a plane being filled). A layer with at least ``min_shell_planes`` planes left is an
   operational shell; a smaller one (a launch batch on its way: one plane, or two) leaves all its
   members ``"between shells"``, as are non-low satellites in no layer.
6. A shell's ``altitude_km`` is the median orbit radius at the common time minus 6378.137 km (as for
   a Walker shell). Planes are numbered by increasing RAAN starting after the widest gap between
   planes, so a shell that does not go round the whole circle has its seam between the last and the
   first plane (and is marked ``"star"``; one that does is ``"delta"``). Slots are numbered by
   argument of latitude at the common time, starting from the smallest.

By default every operational shell is built. With ``inclination_deg`` (or ``altitude_km``) one shell
is chosen and the satellites of the others are ``"other shell"``. With ``include_transient`` the
satellites left out for a :data:`TRANSIENT_REASONS` reason are built too, off the grid
(shell = plane = slot = -1, named ``sat-t-<n>``): nodes without laser links that can still carry
ground links.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from .constellation import OFF_GRID, Constellation, Shell
from .errors import ConfigError, TopologyError
from .frames import EARTH_RADIUS_KM
from .propagate import orbit_angles_deg, sgp4_states
from .tle import DECAY_MEAN_MOTION_REV_DAY, TleRecord

log = logging.getLogger(__name__)

REASON_DECAYING = "decaying"
REASON_ECCENTRIC = "eccentric"
REASON_OTHER_SHELL = "other shell"
REASON_ORBIT_RAISING = "orbit-raising"
REASON_BETWEEN_SHELLS = "between shells"
REASON_SPARSE_PLANE = "sparse plane"
REASON_INVALID = "sgp4 error"
#: Reasons of satellites that are in no operational shell's grid but are satellites all the same:
#: ``include_transient`` builds them as nodes. ``"other shell"`` (a shell not chosen) and ``"sgp4
#: error"`` (no position at the common time) are never built.
TRANSIENT_REASONS = (REASON_DECAYING, REASON_ORBIT_RAISING, REASON_BETWEEN_SHELLS, REASON_SPARSE_PLANE,
                     REASON_ECCENTRIC)
#: Prefix of the node names of satellites off the grid: ``sat-t-0``, ``sat-t-1``, ... in file order.
TRANSIENT_PREFIX = "sat-t-"


@dataclass(frozen=True)
class GroupingConfig:
    """Thresholds for :func:`constellation_from_tle` (see the module docstring for their roles).

    Attributes
    ----------
    inclination_gap_deg : float
        Inclinations further apart than this are different shells; also the inclination window of
        the density count.
    layer_half_width_km : float
        Half width of the altitude window of the density count; dense satellites further apart in
        altitude than twice this are different layers.
    min_batch_sats : int
        Satellites (itself included) within the window for a satellite to count as dense.
    min_plane_size : int
        Planes with fewer satellites are left out (``"sparse plane"``).
    min_shell_planes, min_shell_sats : int
        A layer needs this many planes (of ``min_plane_size`` or more) and this many satellites in
        them to be a shell. A launch batch is one plane (all its satellites share an insertion orbit)
        of at most 60 satellites (Starlink v1.0; 21-29 for V2 Mini), so with the defaults a batch on
        its way up is not mistaken for a shell.
    plane_gap_deg : float
        Largest RAAN gap that may be taken as the boundary between two planes: smaller than the RAAN
        spacing of the planes (5 deg for 72 planes).
    min_plane_spacing_deg, plane_break_ratio : float
        Each layer's own boundary gap is found from its RAANs (see :func:`_plane_gap_deg`): the first
        gap at least this large and this many times the next smaller one.
    max_eccentricity : float
        More eccentric satellites are left out (``"eccentric"``).
    """

    inclination_gap_deg: float = 0.05
    layer_half_width_km: float = 0.25
    min_batch_sats: int = 10
    min_plane_size: int = 5
    min_shell_planes: int = 3
    min_shell_sats: int = 50
    plane_gap_deg: float = 2.0
    min_plane_spacing_deg: float = 0.5
    plane_break_ratio: float = 1.5
    max_eccentricity: float = 0.005

    def __post_init__(self) -> None:
        for key in ("min_batch_sats", "min_plane_size", "min_shell_planes", "min_shell_sats"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key} must be an integer >= 1, got {value!r}", key=key)
        for key in ("inclination_gap_deg", "layer_half_width_km", "plane_gap_deg", "min_plane_spacing_deg",
                    "plane_break_ratio", "max_eccentricity"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{key} must be a positive number, got {value!r}", key=key)


@dataclass(frozen=True)
class ShellCandidate:
    """An operational shell found in a TLE set (see :func:`find_shells`).

    Attributes
    ----------
    inclination_deg : float
        Median inclination of the members, deg.
    altitude_km : float
        Median orbit radius of the members at the common time minus 6378.137 km.
    n_sats : int
        Satellites in the shell's planes (sparse planes left out).
    n_at_altitude : int
        Satellites within the shell's layer (also those of its sparse planes).
    n_planes : int
        Planes with at least ``min_plane_size`` satellites.
    altitude_min_km, altitude_max_km : float
        Range of the members' mean altitudes (semi-major axis minus 6378.137 km).
    """

    inclination_deg: float
    altitude_km: float
    n_sats: int
    n_at_altitude: int
    n_planes: int = 0
    altitude_min_km: float = math.nan
    altitude_max_km: float = math.nan


@dataclass(frozen=True)
class _Elements:
    incl_deg: NDArray[np.float64]
    alt_km: NDArray[np.float64]
    ecc: NDArray[np.float64]
    mean_motion_rev_day: NDArray[np.float64]
    epoch_jd: NDArray[np.float64]


@dataclass
class _Layer:
    """One layer's satellites arranged in planes (indices into the records)."""

    members: NDArray[np.int64]  # in the kept planes, ordered by plane then slot
    plane: NDArray[np.int64]
    slot: NDArray[np.int64]
    n_in_layer: int
    shell: Shell | None = None  # None: not a shell (too few planes)
    left_out: dict[int, str] = field(default_factory=dict)  # record index -> reason within the layer
    altitude_range_km: tuple[float, float] = (math.nan, math.nan)


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


def _neighbour_counts(alt_km: NDArray[np.float64], incl_deg: NDArray[np.float64], half_width_km: float,
                      incl_window_deg: float) -> NDArray[np.int64]:
    """For each point, how many points (itself included) are within both windows.

    Sorted by altitude, each point's altitude window is a contiguous slice; only the inclination test
    runs per point. 10,744 satellites: about 0.1 s.
    """
    order = np.argsort(alt_km, kind="stable")
    a = alt_km[order]
    inc = incl_deg[order]
    lo = np.searchsorted(a, a - half_width_km, side="left")
    hi = np.searchsorted(a, a + half_width_km, side="right")
    counts_sorted = np.empty(a.size, dtype=np.int64)
    for i in range(a.size):
        counts_sorted[i] = np.count_nonzero(np.abs(inc[lo[i]:hi[i]] - inc[i]) <= incl_window_deg)
    counts = np.empty(a.size, dtype=np.int64)
    counts[order] = counts_sorted
    return counts


def _circular_mean_deg(angles_deg: NDArray[np.float64], labels: NDArray[np.int64]) -> NDArray[np.float64]:
    """Circular mean of the angles of each label, [0, 360) deg, indexed by label."""
    rad = np.radians(angles_deg)
    n_labels = int(labels.max()) + 1
    c = np.bincount(labels, weights=np.cos(rad), minlength=n_labels)
    s = np.bincount(labels, weights=np.sin(rad), minlength=n_labels)
    return np.mod(np.degrees(np.arctan2(s, c)), 360.0)


def _plane_gap_deg(raan_deg: NDArray[np.float64], cfg: GroupingConfig) -> float:
    """The RAAN gap that separates two planes of one layer: the break between within-plane gaps and
    between-plane gaps, at most ``cfg.plane_gap_deg``.

    The gaps between neighbouring RAANs (on the circle) are sorted; the break is the first pair of
    consecutive gaps where the larger is at least ``cfg.min_plane_spacing_deg`` and
    ``cfg.plane_break_ratio`` times the smaller, and the threshold their geometric mean. In the 2026
    set the polar layers' planes are 0.77 deg apart with 0.15 deg of spread (24 satellites each): a
    fixed 2 deg merged them in pairs.
    """
    s = np.sort(np.mod(raan_deg, 360.0))
    gaps = np.sort(np.diff(np.concatenate((s, [s[0] + 360.0]))))
    for lo, hi in zip(gaps[:-1].tolist(), gaps[1:].tolist()):
        if hi >= cfg.min_plane_spacing_deg and hi >= cfg.plane_break_ratio * lo:
            return min(cfg.plane_gap_deg, math.sqrt(lo * hi) if lo > 0 else hi / 2.0)
    return cfg.plane_gap_deg


def _arrange_layer(records: Sequence[TleRecord], el: _Elements, members: NDArray[np.int64],
                   cfg: GroupingConfig) -> _Layer:
    """Planes and slots of one layer (steps 5 and 6 of the module docstring)."""
    layer = _Layer(members=np.empty(0, np.int64), plane=np.empty(0, np.int64), slot=np.empty(0, np.int64),
                   n_in_layer=int(members.size),
                   altitude_range_km=(float(el.alt_km[members].min()), float(el.alt_km[members].max())))
    t_jd = float(el.epoch_jd[members].max())
    jd0 = np.floor(t_jd - 0.5) + 0.5
    valid, r, v = sgp4_states([records[i].satrec for i in members.tolist()], np.array([jd0]),
                              np.array([t_jd - jd0]))
    raan, _incl, u = orbit_angles_deg(r[:, 0], v[:, 0])
    radius_km = np.linalg.norm(r[:, 0], axis=-1)
    bad = ~valid[:, 0]
    layer.left_out.update(dict.fromkeys(members[bad].tolist(), REASON_INVALID))
    members, raan, u, radius_km = members[~bad], raan[~bad], u[~bad], radius_km[~bad]
    if members.size == 0:
        return layer
    plane_raw, _start = _clusters_circular(raan, _plane_gap_deg(raan, cfg))
    plane_sizes = np.bincount(plane_raw)
    keep_plane = plane_sizes >= cfg.min_plane_size
    sparse = ~keep_plane[plane_raw]
    layer.left_out.update(dict.fromkeys(members[sparse].tolist(), REASON_SPARSE_PLANE))
    if int(keep_plane.sum()) < cfg.min_shell_planes or int((~sparse).sum()) < cfg.min_shell_sats:
        return layer
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

    order = np.lexsort((u, plane))
    plane_sorted = plane[order]
    first_of_plane = np.searchsorted(plane_sorted, np.arange(n_planes))
    layer.members, layer.plane = members[order], plane_sorted
    layer.slot = np.arange(order.size) - first_of_plane[plane_sorted]
    incl = float(np.median(el.incl_deg[layer.members]))
    # Altitude as a Walker shell states it: mean orbit radius minus the equatorial radius. SGP4's mean
    # semi-major axis (used for layering above) differs by a few km, either way with inclination
    # (2026 set: 485 vs 483 km at 43 deg, 463 vs 464 km at 53.16 deg); the satellites spread over the
    # orbit, so the median radius of their states at one time averages the short-period wobble.
    alt = float(np.median(radius_km)) - EARTH_RADIUS_KM
    # Named by the layer's mean altitude, which does not depend on where along the orbit the
    # satellites happen to be (the median radius moves by a few km with the sample).
    mean_alt = float(np.median(el.alt_km[layer.members]))
    layer.shell = Shell(name=f"tle-{incl:.2f}deg-{mean_alt:.0f}km", pattern=pattern, altitude_km=alt,
                        inclination_deg=incl, planes=n_planes, sats_per_plane=int(np.bincount(plane).max()),
                        phasing=0)
    return layer


@dataclass
class _Grouping:
    reason: NDArray[np.object_]  # "" for members of a shell's planes
    layers: list[_Layer]  # the operational shells, by increasing inclination then altitude


def _group(records: Sequence[TleRecord], cfg: GroupingConfig) -> _Grouping:
    """Steps 1-6 of the module docstring for every satellite of the file."""
    el = _elements(records)
    n = len(records)
    reason = np.full(n, "", dtype=object)
    low = el.mean_motion_rev_day > DECAY_MEAN_MOTION_REV_DAY
    eccentric = ~low & (el.ecc > cfg.max_eccentricity)
    reason[eccentric] = REASON_ECCENTRIC

    counted = np.flatnonzero(~eccentric)
    dense = np.zeros(n, bool)
    if counted.size:
        dense[counted] = _neighbour_counts(el.alt_km[counted], el.incl_deg[counted], cfg.layer_half_width_km,
                                           cfg.inclination_gap_deg) >= cfg.min_batch_sats
    reason[low & dense] = REASON_ORBIT_RAISING
    reason[low & ~dense] = REASON_DECAYING

    high = ~low & ~eccentric
    seeds = np.flatnonzero(high & dense)
    boxes: list[tuple[float, float, float, float, int]] = []
    if seeds.size:
        inc_label = _clusters_1d(el.incl_deg[seeds], cfg.inclination_gap_deg)
        for lab in np.unique(inc_label):
            in_inc = seeds[inc_label == lab]
            alt_label = _clusters_1d(el.alt_km[in_inc], 2.0 * cfg.layer_half_width_km)
            for alab in np.unique(alt_label):
                core = in_inc[alt_label == alab]
                boxes.append((float(el.incl_deg[core].min()), float(el.incl_deg[core].max()),
                              float(el.alt_km[core].min()), float(el.alt_km[core].max()), int(core.size)))
    unassigned = high.copy()
    layers: list[_Layer] = []
    for i_lo, i_hi, a_lo, a_hi, _size in sorted(boxes, key=lambda b: -b[4]):
        inside = (unassigned & (el.incl_deg >= i_lo - cfg.inclination_gap_deg)
                  & (el.incl_deg <= i_hi + cfg.inclination_gap_deg)
                  & (el.alt_km >= a_lo - cfg.layer_half_width_km) & (el.alt_km <= a_hi + cfg.layer_half_width_km))
        members = np.flatnonzero(inside)
        unassigned &= ~inside
        layer = _arrange_layer(records, el, members, cfg)
        if layer.shell is None:
            reason[members] = REASON_BETWEEN_SHELLS  # a batch on its way, not a shell
            for i, why in layer.left_out.items():
                if why == REASON_INVALID:
                    reason[i] = why
            continue
        for i, why in layer.left_out.items():
            reason[i] = why
        layers.append(layer)
    reason[unassigned] = REASON_BETWEEN_SHELLS
    layers.sort(key=lambda ly: (round(_shell(ly).inclination_deg, 1), _shell(ly).altitude_km))
    return _Grouping(reason=reason, layers=layers)


def _shell(layer: _Layer) -> Shell:
    if layer.shell is None:  # _group keeps only layers that are shells
        raise TopologyError("internal: a layer without planes was kept as a shell")
    return layer.shell


def _candidate(layer: _Layer) -> ShellCandidate:
    shell = _shell(layer)
    return ShellCandidate(inclination_deg=shell.inclination_deg, altitude_km=shell.altitude_km,
                          n_sats=int(layer.members.size), n_at_altitude=layer.n_in_layer,
                          n_planes=shell.planes, altitude_min_km=layer.altitude_range_km[0],
                          altitude_max_km=layer.altitude_range_km[1])


def find_shells(records: Sequence[TleRecord], config: GroupingConfig | None = None) -> list[ShellCandidate]:
    """The operational shells of a TLE set, most populous first (see the module docstring)."""
    if not records:
        return []
    return sorted((_candidate(ly) for ly in _group(records, config or GroupingConfig()).layers),
                  key=lambda c: -c.n_sats)


def _describe(cands: Sequence[ShellCandidate]) -> str:
    return ", ".join(f"{c.inclination_deg:.2f} deg/{c.altitude_km:.0f} km ({c.n_sats} sats)"
                     for c in sorted(cands, key=lambda c: -c.n_sats)) or "none"


def _choose(layers: list[_Layer], inclination_deg: float | None, altitude_km: float | None,
            inclination_tolerance_deg: float, altitude_tolerance_km: float, gap_deg: float) -> int:
    """Index of the one layer asked for: nearest inclination, then nearest altitude or most satellites."""
    cands = [_candidate(ly) for ly in layers]
    shells_found = _describe(cands)
    incl = np.array([c.inclination_deg for c in cands])
    pool = np.arange(len(cands))
    if inclination_deg is not None:
        dist = np.abs(incl - inclination_deg)
        if not dist.size or not dist.min() <= inclination_tolerance_deg:
            raise ConfigError(f"no shell within {inclination_tolerance_deg} deg of inclination {inclination_deg} "
                              f"deg; shells found: {shells_found}", key="inclination_deg")
        # the nearest shell and every shell of the same inclination (within the clustering gap)
        pool = np.flatnonzero(np.abs(incl - incl[np.argmin(dist)]) <= gap_deg)
    if altitude_km is not None:
        alt = np.array([cands[i].altitude_km for i in pool])
        best = int(pool[np.argmin(np.abs(alt - altitude_km))])
        if not abs(cands[best].altitude_km - altitude_km) <= altitude_tolerance_km:
            raise ConfigError(f"no shell within {altitude_tolerance_km} km of altitude {altitude_km} km"
                              + (f" at inclination {inclination_deg} deg" if inclination_deg is not None else "")
                              + f"; shells found: {shells_found}", key="altitude_km")
        return best
    return int(pool[np.argmax([cands[i].n_sats for i in pool])])


def constellation_from_tle(
    records: Sequence[TleRecord],
    *,
    inclination_deg: float | None = None,
    altitude_km: float | None = None,
    include_transient: bool = False,
    min_plane_size: int = 5,
    inclination_tolerance_deg: float = 0.5,
    inclination_gap_deg: float = 0.05,
    altitude_band_km: float = 10.0,
    plane_gap_deg: float = 2.0,
    max_eccentricity: float = 0.005,
    config: GroupingConfig | None = None,
) -> Constellation:
    """Group real TLE sets into shells, planes and slots: every operational shell, or the one asked for.

    Parameters
    ----------
    records : sequence of TleRecord
        Element sets, e.g. from :func:`topologies.tle.load_tle`.
    inclination_deg : float, optional
        Build only the shell nearest this inclination (within ``inclination_tolerance_deg``); among
        several layers of that inclination, the most populous (or the one nearest ``altitude_km``).
    altitude_km : float, optional
        Build only the shell nearest this altitude (within ``altitude_band_km``).
    include_transient : bool
        Also build the satellites left out for a :data:`TRANSIENT_REASONS` reason, off the grid.
    min_plane_size, inclination_gap_deg, plane_gap_deg, max_eccentricity
        Thresholds, see :class:`GroupingConfig`; ignored when ``config`` is given.
    inclination_tolerance_deg, altitude_band_km
        How far the shell chosen may be from ``inclination_deg`` and ``altitude_km``.
    config : GroupingConfig, optional
        All grouping thresholds at once.

    Returns
    -------
    Constellation
        Shells named ``tle-<inclination, 2 decimals>deg-<mean altitude>km`` (semi-major axis minus
        6378.137 km; ``altitude_km`` is the median orbit radius minus that, a few km more) by increasing
        inclination, then altitude; satellites ``sat-<plane>-<slot>`` with one shell,
        ``sat-<shell>-<plane>-<slot>`` with several, in shell, plane, slot order, then the satellites
        off the grid (``sat-t-<n>``, file order, shell = plane = slot = -1). ``excluded`` counts the
        satellites left out (not built) by reason, ``excluded_names`` names them; ``transient`` names
        the ones built off the grid.

    Raises
    ------
    ConfigError
        Bad thresholds, no operational shell in the file, or none near the requested
        inclination/altitude (the message lists the shells found).
    """
    if not records:
        raise ConfigError("no TLE records given", key="records")
    for key, value in (("inclination_tolerance_deg", inclination_tolerance_deg),
                       ("altitude_band_km", altitude_band_km)):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{key} must be a positive number, got {value!r}", key=key)
    cfg = config or GroupingConfig(inclination_gap_deg=inclination_gap_deg, min_plane_size=min_plane_size,
                                   plane_gap_deg=plane_gap_deg, max_eccentricity=max_eccentricity)
    grouping = _group(records, cfg)
    reason, layers = grouping.reason, grouping.layers
    source = records[0].file
    if not layers:
        left = ", ".join(f"{k} {v}" for k, v in sorted(_count(reason).items())) or "none"
        raise ConfigError(f"no operational shell (a layer of at least {cfg.min_shell_planes} planes of "
                          f"{cfg.min_plane_size} or more satellites above {DECAY_MEAN_MOTION_REV_DAY} rev/day) "
                          f"among {len(records)} satellites ({left})", file=source, key="records")
    if inclination_deg is not None or altitude_km is not None:
        chosen = _choose(layers, inclination_deg, altitude_km, inclination_tolerance_deg, altitude_band_km,
                         cfg.inclination_gap_deg)
        for k, ly in enumerate(layers):
            if k != chosen:
                reason[ly.members] = REASON_OTHER_SHELL
        layers = [layers[chosen]]

    several = len(layers) > 1
    names: list[str] = []
    idx: list[NDArray[np.int64]] = []
    shell_l: list[NDArray[np.int64]] = []
    plane_l: list[NDArray[np.int64]] = []
    slot_l: list[NDArray[np.int64]] = []
    shells: list[Shell] = []
    for k, ly in enumerate(layers):
        shell = _shell(ly)
        if shell.name in {s.name for s in shells}:  # two layers rounding to one name: keep names unique
            shell = Shell(**{**shell.__dict__, "name": f"{shell.name}-{k}"})
        shells.append(shell)
        prefix = f"sat-{k}-" if several else "sat-"
        names += [f"{prefix}{p}-{s}" for p, s in zip(ly.plane.tolist(), ly.slot.tolist())]
        idx.append(ly.members)
        shell_l.append(np.full(ly.members.size, k))
        plane_l.append(ly.plane)
        slot_l.append(ly.slot)
    transient_idx = np.flatnonzero(np.isin(reason, TRANSIENT_REASONS)) if include_transient else np.empty(0, int)
    transient = tuple((f"{TRANSIENT_PREFIX}{n}", str(reason[i])) for n, i in enumerate(transient_idx.tolist()))
    names += [name for name, _why in transient]
    off = np.full(transient_idx.size, OFF_GRID)
    members = np.concatenate([*idx, transient_idx]).astype(np.int64)
    left_mask = reason != ""
    left_mask[transient_idx] = False
    left_out = np.flatnonzero(left_mask)
    excluded = _count(reason[left_out])
    log.info("%s: %d satellites in %d shells (%s)%s; left out: %s", source, int(sum(i.size for i in idx)),
             len(shells), ", ".join(f"{s.name} {s.planes} planes" for s in shells),
             f", {len(transient)} off the grid" if transient else "",
             ", ".join(f"{k} {v}" for k, v in sorted(excluded.items())) or "none")
    return Constellation(
        names=tuple(names),
        satrecs=tuple(records[i].satrec for i in members.tolist()),
        shell=np.concatenate([*shell_l, off]),
        plane=np.concatenate([*plane_l, off]),
        slot=np.concatenate([*slot_l, off]),
        shells=tuple(shells),
        excluded=excluded,
        excluded_names=tuple((records[i].name, str(reason[i])) for i in left_out.tolist()),
        source=source,
        transient=transient,
        tle_names=tuple(records[i].name for i in members.tolist()),
    )


def _count(reasons: NDArray[np.object_]) -> dict[str, int]:
    out: dict[str, int] = {}
    for why in reasons.tolist():
        if why:
            out[why] = out.get(why, 0) + 1
    return out
