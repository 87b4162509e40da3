"""Laser inter-satellite links: the +Grid link table and each link's state and delay over time.

:func:`plus_grid` builds the fixed table of candidate ISLs from the constellation's (shell, plane,
slot) labels; :func:`isl_states` decides, for every link and step, whether it is up and if not why
(a :class:`~topologies.timeline.Reason`), and its propagation delay. The table spends each
satellite's laser terminals (one budget for every kind of laser link, see :func:`plus_grid_arrays`);
what it leaves (``IslTopology.spare``, and :func:`usable_spare` once the states are known) is what
:mod:`topologies.crossshell` links between shells.

Reason precedence (the first that applies is reported)::

    INVALID > TERMINALS > SEAM > OCCLUDED > RANGE > POLAR > TRACKING > OUTAGE > ACQUIRING > UP

Missing positions make every other test meaningless, so INVALID comes first; then the structural
reasons that hold for the whole run (TERMINALS, SEAM); then geometry (line of sight before the range
limit, because with the default range limit the two coincide and "the Earth is in the way" is the
more useful answer), then the terminal's own limits, and last the transient states of a link that
is geometrically fine.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import ConfigError, TopologyError, check_range
from .frames import EARTH_RADIUS_KM, ecef_to_geodetic
from .outages import apply_acquisition, pointing_outages, steps_for
from .timeline import C_KM_S, LINK_ROLES, Reason

log = logging.getLogger(__name__)

ROLE_INTRA = LINK_ROLES.index("intra")
ROLE_INTER = LINK_ROLES.index("inter")
PORTS = ("fore", "aft", "left", "right")

#: Most laser terminals a satellite may have: 4 for the +Grid, the rest for cross-shell links.
MAX_TERMINALS = 8
#: Laser terminals per Starlink V1.5 / V2-mini satellite (docs/model.md gives the sources).
STARLINK_TERMINALS = 3

#: Links are evaluated in blocks of this many, so temporaries stay a few MB for 600+ steps.
_BLOCK_LINKS = 256


@dataclass(frozen=True)
class IslConfig:
    """Laser terminal model for all ISLs.

    Attributes
    ----------
    terminals : int or None
        Laser terminals per satellite, 0..8: one budget shared by in-plane, cross-plane and
        cross-shell links (see :func:`plus_grid_arrays` for how it is split). None (default): 4 for a
        Walker constellation (the full +Grid: fore, aft, left, right), :data:`STARLINK_TERMINALS` (3)
        for one built from TLEs (Starlink). Satellites that belong to no plane (``plane < 0``:
        transient, raising or decaying) have none, whatever this says: they are bent-pipe only.
    max_range_km : float or None
        Longest usable link, km. None (default): the Hypatia-style geometric limit from the shells'
        nominal altitudes, ``sqrt((R + h_a)^2 - (R + m)^2) + sqrt((R + h_b)^2 - (R + m)^2)`` with
        ``R = EARTH_RADIUS_KM`` and ``m = atmosphere_margin_km`` (about 5016.6 km at 550 km, Hypatia's 5016 km
        for Starlink). A number models a
        terminal whose link budget ends there.
    atmosphere_margin_km : float
        A link is OCCLUDED when the straight segment between the satellites comes closer to the
        Earth's centre than ``EARTH_RADIUS_KM + atmosphere_margin_km``. 80 km (as Hypatia): below about
        that height the beam crosses the denser atmosphere.
    polar_cutoff_deg : float or None
        Inter-plane (left/right) links are down while either end is above this geodetic |latitude|,
        deg; None disables it. Near the poles neighbouring planes cross, the left/right partners swap
        sides and the pointing angles sweep fast, so operators switch cross-plane links off there
        (Iridium does). 75 deg is a modelling choice, not a datasheet figure: it never affects a
        53 deg shell and removes the crossing region of a polar one.
    max_slew_rate_deg_s : float or None
        Largest line-of-sight angular rate, deg/s, that a terminal can follow, measured in the
        satellite's orbital (LVLH) frame; the larger of the two ends counts. None disables it.
        Default 1.0 deg/s: an assumption, not a datasheet figure, set above what +Grid needs so that
        it only removes unusual geometries. Measured over 10 minutes with this code: the largest rate
        on a +Grid link is about 0.18 deg/s (starlink-shell1 inter-plane), 0.13 (iridium), 0.06
        (kuiper-630); intra-plane links need about 1e-4; satellites on the counter-rotating planes of
        a star seam reach about 0.6 deg/s.
    acquisition_s : float
        Time a link stays down (ACQUIRING) after it becomes available again, s. Links available at the
        first step are taken as already acquired. 5 s is an assumption for a modern LEO terminal
        (pointing, acquisition and tracking lock take seconds to tens of seconds).
    cross_shell : bool
        Spare terminals (those the +Grid leaves free) link satellites of different shells (see
        :mod:`topologies.crossshell`). Default True; with one shell, or no spare terminal, there are none.
    cross_shell_share : float
        With 3 terminals and several shells: the share of each plane's satellites, evenly spread
        along the plane, whose third terminal is kept for cross-shell links instead of a
        cross-plane one, [0, 1]. Default 0.25 (a modelling choice: enough links to join the shells,
        most third terminals still build the shell's own mesh).
    lasers_from_launch : str or None
        COSPAR launch ``"YYYY-NNN"`` of the first satellites with laser terminals: satellites of a
        TLE set launched earlier (by their international designator) have none and are bent-pipe
        only. Default ``"2021-082"``, Starlink Group 2-1 (14 September 2021), the first full batch
        with lasers; Starlink's earlier V1.0 satellites had none (the ten polar test satellites of
        2021-006 are left out with them). Satellites without a designator (Walker shells) are not
        affected. None: every satellite has lasers.
    min_hold_s : float
        A cross-shell link starts only if it stays feasible (range, line of sight, tracking rate)
        for at least this long from its start (or until the scenario ends), s. Default 60 s: at
        ``acquisition_s`` = 5 s a shorter link would spend more than a twelfth of its life acquiring.
    rate_mbps, loss_pct : float
        Rate (each direction) and random loss given to every ISL.
    outage_mtbf_s : float or None
        Mean up time between random pointing outages of one link, s; None: no random outages.
    outage_mean_duration_s : float
        Mean duration of a random outage, s.
    seed : int
        Seed of the random outages.
    """

    terminals: int | None = None
    max_range_km: float | None = None
    atmosphere_margin_km: float = 80.0
    polar_cutoff_deg: float | None = 75.0
    max_slew_rate_deg_s: float | None = 1.0
    acquisition_s: float = 5.0
    rate_mbps: float = 100.0
    loss_pct: float = 0.0
    outage_mtbf_s: float | None = None
    outage_mean_duration_s: float = 5.0
    seed: int = 0
    cross_shell: bool = True
    cross_shell_share: float = 0.25
    min_hold_s: float = 60.0
    lasers_from_launch: str | None = "2021-082"

    def __post_init__(self) -> None:
        check_range("terminals", self.terminals, 0, MAX_TERMINALS, integer=True, none_ok=True)
        check_range("max_range_km", self.max_range_km, 0.0, 1e6, none_ok=True, lo_open=True)
        check_range("atmosphere_margin_km", self.atmosphere_margin_km, 0.0, 1000.0)
        check_range("polar_cutoff_deg", self.polar_cutoff_deg, 0.0, 90.0, none_ok=True)
        check_range("max_slew_rate_deg_s", self.max_slew_rate_deg_s, 0.0, 360.0, none_ok=True,
                     lo_open=True)
        check_range("acquisition_s", self.acquisition_s, 0.0, 3600.0)
        check_range("rate_mbps", self.rate_mbps, 0.0, 1e6, lo_open=True)
        check_range("loss_pct", self.loss_pct, 0.0, 100.0)
        check_range("outage_mtbf_s", self.outage_mtbf_s, 0.0, 1e9, none_ok=True, lo_open=True)
        check_range("outage_mean_duration_s", self.outage_mean_duration_s, 0.0, 1e6, lo_open=True)
        check_range("seed", self.seed, 0, 2**63 - 1, integer=True)
        if not isinstance(self.cross_shell, bool):
            raise ConfigError(f"cross_shell must be true or false, got {self.cross_shell!r}", key="cross_shell")
        check_range("cross_shell_share", self.cross_shell_share, 0.0, 1.0)
        check_range("min_hold_s", self.min_hold_s, 0.0, 86400.0)
        if self.lasers_from_launch is not None and not (isinstance(self.lasers_from_launch, str)
                                                        and re.fullmatch(r"\d{4}-\d{3}", self.lasers_from_launch)):
            raise ConfigError(f"lasers_from_launch must be a COSPAR launch like \"2021-082\" (year-launch), "
                              f"got {self.lasers_from_launch!r}", key="lasers_from_launch")

    def has_lasers(self, constellation: Any) -> NDArray[np.bool_]:
        """(n_sats,) bool: the satellite carries laser terminals (see ``lasers_from_launch``)."""
        n = constellation.n_sats
        if self.lasers_from_launch is None or n == 0:
            return np.ones(n, bool)
        first = int(self.lasers_from_launch[:4]) * 1000 + int(self.lasers_from_launch[5:])
        out = np.ones(n, bool)
        for i, sat in enumerate(constellation.satrecs):
            desig = str(getattr(sat, "intldesg", "") or "")
            if len(desig) >= 5 and desig[:5].isdigit():
                yy = int(desig[:2])
                out[i] = (1900 + yy if yy >= 57 else 2000 + yy) * 1000 + int(desig[2:5]) >= first
        return out

    def terminals_for(self, constellation: Any) -> int:
        """Laser terminals per satellite for ``constellation`` (resolves the None default)."""
        if self.terminals is not None:
            return self.terminals
        return 4 if str(getattr(constellation, "source", "")).startswith("walker:") else STARLINK_TERMINALS


@dataclass(frozen=True)
class IslTopology:
    """The fixed table of candidate ISLs (one entry per undirected link).

    Attributes
    ----------
    pairs : ndarray, (n_isl, 2) int32
        Satellite indices of the two ends (``a``, ``b``).
    role : ndarray, (n_isl,) uint8
        ``LINK_ROLES`` index: 0 intra (fore/aft in a plane), 1 inter (left/right to a neighbour plane).
    port_a, port_b : ndarray, (n_isl,) str
        Terminal used at each end: ``"fore"``/``"aft"`` for intra links (``a``'s fore is ``b``'s aft:
        ``b`` is the next satellite along the orbit), ``"right"``/``"left"`` for inter links (``a`` is
        in plane ``p``, ``b`` in plane ``p + 1``).
    seam : ndarray, (n_isl,) bool
        Across the seam of a Walker-star shell: always down (SEAM). Kept in the table so the report
        shows them; the terminal exists but has no usable partner.
    dropped : ndarray, (n_isl,) bool
        Dropped because the satellites have fewer than 4 terminals: always down (TERMINALS). Only
        present when :func:`plus_grid` was asked to keep them.
    altitude_km : ndarray, (n_isl,) float64
        Nominal altitudes of the ends' shells (lower of the two), km; NaN if unknown. Used for the
        default range limit.
    stats : dict
        Counts for the run report: links, intra, inter, seam, terminals_dropped, unmatched (satellites
        left without a left/right partner by ragged planes), terminals (per satellite of a plane),
        cross_shell_reserved, spare_terminals.
    spare : ndarray, (n_sats,) int32, or None
        Terminals each satellite has left for cross-shell links once the table's links (without the
        always-down SEAM/TERMINALS ones) have theirs; 0 everywhere unless cross-shell links are on.
    """

    pairs: NDArray[np.int32]
    role: NDArray[np.uint8]
    port_a: NDArray[np.str_]
    port_b: NDArray[np.str_]
    seam: NDArray[np.bool_]
    dropped: NDArray[np.bool_]
    altitude_km: NDArray[np.float64]
    stats: dict[str, int] = field(default_factory=dict)
    spare: NDArray[np.int32] | None = None

    def __post_init__(self) -> None:
        n = len(self.pairs)
        if self.pairs.shape != (n, 2):
            raise TopologyError(f"pairs must have shape (n, 2), got {self.pairs.shape}")
        for name in ("role", "port_a", "port_b", "seam", "dropped", "altitude_km"):
            if getattr(self, name).shape != (n,):
                raise TopologyError(f"{name} must have shape ({n},), got {getattr(self, name).shape}")

    @property
    def n_isl(self) -> int:
        return len(self.pairs)

    def degree(self, n_sats: int, *, include_down: bool = False) -> NDArray[np.int64]:
        """Links per satellite, (n_sats,); by default without the permanently down SEAM/TERMINALS ones."""
        keep = np.ones(self.n_isl, bool) if include_down else ~(self.seam | self.dropped)
        return np.bincount(self.pairs[keep].ravel(), minlength=n_sats)


def _circ_dist_deg(a: NDArray[np.floating], b: NDArray[np.floating]) -> NDArray[np.floating]:
    d = np.mod(a - b, 360.0)
    return np.minimum(d, 360.0 - d)


def _match_planes(u_p: NDArray[np.floating], u_q: NDArray[np.floating]) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """One-to-one partners between two planes by nearest argument of latitude.

    Equal sizes: the cyclic shift with the least total angular mismatch (keeps the along-track order,
    as a Walker pattern's phasing does). Ragged sizes: a minimum-cost assignment, leaving the extras
    of the larger plane unmatched. Returns positions into ``u_p`` and ``u_q``.
    """
    m_p, m_q = len(u_p), len(u_q)
    if m_p == 0 or m_q == 0:
        return np.empty(0, np.intp), np.empty(0, np.intp)
    return _assign(_circ_dist_deg(u_p[:, None], u_q[None, :]))


def _match_planes_km(r_p: NDArray[np.floating], r_q: NDArray[np.floating]) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """One-to-one partners between two planes by distance, (m_p, 3) and (m_q, 3) positions in km.

    Neighbouring planes are not aligned in argument of latitude: seen from plane ``p``, plane ``q``'s
    satellites are shifted along the track by about ``dRAAN cos(i)`` besides the Walker phasing, so
    the partner nearest in angle can be the farther of two (on a half-slot-shifted layout the
    angular rule picks links up to twice as long as needed). Distance needs no such correction.
    """
    if len(r_p) == 0 or len(r_q) == 0:
        return np.empty(0, np.intp), np.empty(0, np.intp)
    d = np.sqrt(((r_p[:, None, :] - r_q[None, :, :]) ** 2).sum(axis=-1))
    return _assign(np.where(np.isfinite(d), d, 1e9))


def _assign(cost: NDArray[np.floating]) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Equal sizes: the cyclic shift (slot order kept) with the least total cost. Ragged: a
    minimum-cost assignment, leaving the extras of the larger plane unmatched."""
    m_p, m_q = cost.shape
    if m_p == m_q:
        i = np.arange(m_p)
        shifts = (i[:, None] + i[None, :]) % m_q  # [shift, i] -> position in q
        best = int(np.argmin(cost[i[None, :], shifts].sum(axis=1)))
        return i, shifts[best]
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost)
    return rows.astype(np.intp), cols.astype(np.intp)


def _spread(m: int, share: float) -> NDArray[np.bool_]:
    """``floor(m * share)`` of ``m`` positions, evenly spread (position r is chosen when
    ``floor((r + 1) share)`` steps up)."""
    r = np.arange(m)
    return np.floor((r + 1) * share + 1e-9) > np.floor(r * share + 1e-9)


def plus_grid_arrays(shell: NDArray[np.integer], plane: NDArray[np.integer], slot: NDArray[np.integer],
                     u_deg: NDArray[np.floating], patterns: tuple[str, ...],
                     altitudes_km: tuple[float, ...] | None = None, terminals: int = 4,
                     keep_dropped: bool = False, r_km: NDArray[np.floating] | None = None,
                     cross_shell: bool = False, cross_shell_share: float = 0.0,
                     has_lasers: NDArray[np.bool_] | None = None) -> IslTopology:
    """+Grid from plain label arrays (what :func:`plus_grid` does once it has read the constellation).

    Parameters
    ----------
    shell, plane, slot : array_like, (n_sats,) int
        Shell index, plane within the shell (0..P-1 by RAAN; negative: in no plane, no lasers),
        position in the plane (by argument of latitude).
    u_deg : array_like, (n_sats,) float
        Argument of latitude at one common time, deg; picks inter-plane partners when ``r_km`` is
        not given.
    patterns : tuple of str
        ``"delta"`` or ``"star"`` per shell.
    altitudes_km : tuple of float, optional
        Nominal altitude per shell, km (for the default range limit).
    terminals : int
        Laser terminals per satellite, 0..8, one budget for every laser link. The split
        (deterministic, no degree ever exceeds ``terminals``):

        * 4 or more: fore, aft, left, right (+Grid); terminals beyond 4 are cross-shell terminals.
        * 3: fore, aft and one cross-plane link per satellite at most. Plane pairs are taken in
          order (0-1, 1-2, ..., then the wrap P-1 - 0; never across a star seam); the first keeps
          every other matched pair (in slot order), each later one every matched pair whose two
          satellites have their third terminal still free. About half of each plane then links
          ahead and half behind, and the planes of a shell stay one mesh. With
          ``cross_shell`` and several shells, ``cross_shell_share`` of each plane's satellites
          (evenly spread by slot) keep their third terminal for cross-shell links instead.
        * 2: fore/aft only; 1: fore/aft links from slot ``2k`` to ``2k + 1`` only; 0: nothing.

        A satellite left without a partner on some terminal (ragged planes, the end of a chain, a
        star seam) has it spare for cross-shell links.
    keep_dropped : bool
        Keep the links dropped for lack of terminals in the table, permanently down (TERMINALS).
    r_km : array_like, (n_sats, 3) float, optional
        Positions at the matching epoch, km (any common inertial frame): inter-plane partners are
        then the nearest in distance (:func:`_match_planes_km`). NaN rows (no position) get none.
    cross_shell : bool
        Count spare terminals (``spare``) for cross-shell links.
    cross_shell_share : float
        See ``terminals`` = 3.
    has_lasers : array_like, (n_sats,) bool, optional
        False for a satellite without laser terminals: it gets no link, and its plane's rings and
        matchings skip it (its fore and aft neighbours link to each other). Default: all have lasers.

    Raises
    ------
    TopologyError
        Inconsistent labels.
    """
    shell = np.asarray(shell, dtype=np.int64)
    plane = np.asarray(plane, dtype=np.int64)
    slot = np.asarray(slot, dtype=np.int64)
    u_deg = np.asarray(u_deg, dtype=np.float64)
    n = len(shell)
    if not (plane.shape == slot.shape == u_deg.shape == (n,)):
        raise TopologyError("shell, plane, slot and u_deg must all have shape (n_sats,)")
    r = None if r_km is None else np.asarray(r_km, dtype=np.float64)
    if r is not None and r.shape != (n, 3):
        raise TopologyError(f"r_km must have shape ({n}, 3), got {r.shape}")
    if n and shell.max() >= len(patterns):
        raise TopologyError(f"shell index {int(shell.max())} but only {len(patterns)} patterns")
    if isinstance(terminals, bool) or not isinstance(terminals, (int, np.integer)) \
            or not 0 <= terminals <= MAX_TERMINALS:
        raise ConfigError(f"terminals must be an integer in [0, {MAX_TERMINALS}], got {terminals!r}",
                          key="terminals")
    alts = altitudes_km if altitudes_km is not None else tuple(math.nan for _ in patterns)
    equipped = (plane >= 0) & (np.ones(n, bool) if has_lasers is None else np.asarray(has_lasers, bool))
    lasers = equipped if terminals > 0 else np.zeros(n, bool)
    laser_shells = np.unique(shell[lasers])
    # With 3 terminals, the third of some satellites is kept for cross-shell links (only worth it
    # when there is another shell to link to).
    reserve = terminals == 3 and cross_shell and cross_shell_share > 0 and len(laser_shells) > 1
    third_used = np.zeros(n, bool)  # terminals == 3: third terminal taken (or reserved)

    a_l: list[NDArray[np.int64]] = []
    b_l: list[NDArray[np.int64]] = []
    role_l: list[NDArray[np.uint8]] = []
    seam_l: list[NDArray[np.bool_]] = []
    drop_l: list[NDArray[np.bool_]] = []
    alt_l: list[NDArray[np.float64]] = []
    unmatched = 0
    n_reserved = 0
    for k, pattern in enumerate(patterns):
        in_shell = np.flatnonzero((shell == k) & equipped)
        if in_shell.size == 0:
            continue
        planes = np.unique(plane[in_shell])
        members: dict[int, NDArray[np.int64]] = {}
        for p in planes:
            idx = in_shell[plane[in_shell] == p]
            members[int(p)] = idx[np.argsort(slot[idx], kind="stable")]
            if reserve:
                mine = members[int(p)][_spread(len(idx), cross_shell_share)]
                third_used[mine] = True
                n_reserved += len(mine)
        # intra-plane rings: slot i -> next slot (fore of a = aft of b)
        for idx in members.values():
            m = len(idx)
            if m < 2:
                continue
            i = np.arange(m if m > 2 else 1)
            a_l.append(idx[i])
            b_l.append(idx[(i + 1) % m])
            role_l.append(np.full(len(i), ROLE_INTRA, np.uint8))
            seam_l.append(np.zeros(len(i), bool))
            if terminals >= 2:
                drop = np.zeros(len(i), bool)
            elif terminals == 1:
                drop = (i % 2 == 1) | (i + 1 >= m)
            else:
                drop = np.ones(len(i), bool)
            drop_l.append(drop)
            alt_l.append(np.full(len(i), alts[k], np.float64))
        # inter-plane: plane p -> p + 1, wrapping P-1 -> 0 (across the seam for a star shell)
        order = sorted(members)
        n_planes = len(order)
        plane_pairs = [(order[j], order[(j + 1) % n_planes], j) for j in range(n_planes)]
        if n_planes < 2:
            plane_pairs = []
        elif n_planes == 2:
            plane_pairs = plane_pairs[:1]
        matched_sats: set[int] = set()
        for p, q, j in plane_pairs:
            ip, iq = members[p], members[q]
            if r is not None:
                rp, rq = _match_planes_km(r[ip], r[iq])
                ok = np.isfinite(r[ip[rp]]).all(axis=1) & np.isfinite(r[iq[rq]]).all(axis=1)
            else:
                rp, rq = _match_planes(u_deg[ip], u_deg[iq])
                ok = np.isfinite(u_deg[ip[rp]]) & np.isfinite(u_deg[iq[rq]])
            rp, rq = rp[ok], rq[ok]
            is_wrap = j == n_planes - 1
            is_seam = is_wrap and pattern == "star"
            sa, sb = ip[rp], iq[rq]
            if terminals >= 4:
                drop = np.zeros(len(rp), bool)
            elif terminals == 3 and not is_seam:
                drop = third_used[sa] | third_used[sb]
                if j == 0:  # the first pair takes every other one, so the next plane has half left
                    order_p = np.argsort(slot[sa], kind="stable")
                    free_rank = np.cumsum(~drop[order_p]) - 1
                    every_other = np.zeros(len(sa), bool)
                    every_other[order_p] = free_rank % 2 == 1
                    drop |= every_other
                third_used[sa[~drop]] = True
                third_used[sb[~drop]] = True
            else:
                drop = np.ones(len(rp), bool)
            a_l.append(sa)
            b_l.append(sb)
            role_l.append(np.full(len(rp), ROLE_INTER, np.uint8))
            seam_l.append(np.full(len(rp), is_seam, bool))
            drop_l.append(drop)
            alt_l.append(np.full(len(rp), alts[k], np.float64))
            matched_sats.update(sa.tolist())
            matched_sats.update(sb.tolist())
        if n_planes >= 2:
            unmatched += int(in_shell.size - len(matched_sats & set(in_shell.tolist())))

    def cat(parts: list[Any], dtype: Any) -> Any:
        return np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype)

    a = cat(a_l, np.int32)
    b = cat(b_l, np.int32)
    role = cat(role_l, np.uint8)
    seam = cat(seam_l, bool)
    dropped = cat(drop_l, bool)
    alt = cat(alt_l, np.float64)
    n_dropped = int(dropped.sum())
    if not keep_dropped:
        keep = ~dropped
        a, b, role, seam, dropped, alt = a[keep], b[keep], role[keep], seam[keep], dropped[keep], alt[keep]
    intra = role == ROLE_INTRA
    port_a = np.where(intra, "fore", "right")
    port_b = np.where(intra, "aft", "left")
    live = ~(seam | dropped)
    degree = np.bincount(np.stack([a[live], b[live]]).ravel(), minlength=n)[:n] if n else np.zeros(0, np.int64)
    spare = np.zeros(n, np.int32)
    if cross_shell and len(laser_shells) > 1:
        spare[lasers] = np.maximum(terminals - degree[lasers], 0)
    stats = {"links": len(a), "intra": int(intra.sum()), "inter": int((~intra).sum()),
             "seam": int(seam.sum()), "terminals_dropped": n_dropped, "unmatched": unmatched,
             "terminals": int(terminals), "no_lasers": int(n - lasers.sum()),
             "cross_shell_reserved": n_reserved,
             "spare_terminals": int(spare.sum())}
    log.debug("+Grid: %s", stats)
    return IslTopology(pairs=np.stack([a, b], axis=1).reshape(-1, 2).astype(np.int32), role=role,
                       port_a=port_a, port_b=port_b, seam=seam, dropped=dropped, altitude_km=alt,
                       stats=stats, spare=spare)


def positions_at(constellation: Any, when: datetime) -> NDArray[np.float64]:
    """TEME positions of every satellite at ``when``, (n_sats, 3) km; NaN where SGP4 fails."""
    from .propagate import julian_date, sgp4_states

    jd, fr = julian_date(when)
    _valid, r, _v = sgp4_states(constellation.satrecs, np.array([jd]), np.array([fr]))
    return np.asarray(r[:, 0], dtype=np.float64)


def _epoch_of(constellation: Any) -> datetime:
    """A common time for the whole constellation: the first satellite's element epoch."""
    sat = constellation.satrecs[0]
    jd = float(sat.jdsatepoch) - 2440587.5 + float(sat.jdsatepochF)
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=jd)


def plus_grid(constellation: Any, cfg: IslConfig | None = None, *, when: datetime | None = None,
              keep_dropped: bool = False) -> IslTopology:
    """The +Grid ISL table of a constellation: fore/aft in each plane, left/right to neighbour planes.

    Links stay within a shell. Intra-plane links join consecutive slots into a ring. Inter-plane
    links join plane ``p`` to plane ``p + 1``; each satellite is paired with the satellite of the next
    plane nearest in distance at ``when``, one-to-one (for a Walker delta a cyclic shift of the slots,
    also across the wrap from plane P-1 to plane 0; for ragged TLE planes a minimum-cost matching, so
    no satellite ever gets two right or two left partners). A Walker-star shell keeps its P-1 -> 0
    links in the table, marked ``seam`` (always down, counted in ``stats["seam"]``). Satellites in
    no plane (``plane < 0``) get no links.

    Parameters
    ----------
    constellation : Constellation
        Satellites with shell/plane/slot labels.
    cfg : IslConfig, optional
        ``terminals``, ``cross_shell`` and ``cross_shell_share`` are used here (see
        :func:`plus_grid_arrays` for how the terminals are split).
    when : datetime, optional
        The matching epoch, at which distances are compared; default the first satellite's TLE
        epoch. The table is fixed for the whole run.
    keep_dropped : bool
        Keep links dropped for lack of terminals, permanently down (TERMINALS).

    Returns
    -------
    IslTopology
    """
    cfg = cfg or IslConfig()
    terminals = cfg.terminals_for(constellation)
    patterns = tuple(s.pattern for s in constellation.shells)
    if constellation.n_sats == 0:
        return plus_grid_arrays(np.empty(0, int), np.empty(0, int), np.empty(0, int), np.empty(0),
                                patterns, terminals=terminals)
    r = positions_at(constellation, when or _epoch_of(constellation))
    return plus_grid_arrays(constellation.shell, constellation.plane, constellation.slot,
                            np.zeros(constellation.n_sats), patterns,
                            tuple(float(s.altitude_km) for s in constellation.shells),
                            terminals=terminals, keep_dropped=keep_dropped, r_km=r,
                            cross_shell=cfg.cross_shell, cross_shell_share=cfg.cross_shell_share,
                            has_lasers=cfg.has_lasers(constellation))


def max_isl_range_km(altitude_a_km: Any, altitude_b_km: Any, atmosphere_margin_km: float = 80.0) -> Any:
    """Longest line of sight between two satellites that stays above ``R + margin``, km.

    ``sqrt((R + h_a)^2 - (R + m)^2) + sqrt((R + h_b)^2 - (R + m)^2)``; NaN if either is below ``m``.

    Examples
    --------
    >>> round(float(max_isl_range_km(550.0, 550.0)), 1)
    5016.6
    """
    rm = EARTH_RADIUS_KM + atmosphere_margin_km
    ha = np.asarray(altitude_a_km, dtype=np.float64)
    hb = np.asarray(altitude_b_km, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.sqrt((EARTH_RADIUS_KM + ha) ** 2 - rm**2) + np.sqrt((EARTH_RADIUS_KM + hb) ** 2 - rm**2)


def _norm(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.sqrt(np.einsum("...i,...i->...", x, x))


def los_rate_deg_s(r_a_km: NDArray[np.float64], v_a_km_s: NDArray[np.float64],
                   r_b_km: NDArray[np.float64], v_b_km_s: NDArray[np.float64]) -> NDArray[np.float64]:
    """Angular rate of the line of sight a -> b in a's orbital (LVLH) frame, deg/s.

    ``|r_rel x (v_rel - w x r_rel)| / |r_rel|^2`` with ``r_rel = r_b - r_a``, ``v_rel = v_b - v_a``
    (inertial, e.g. TEME) and ``w = r_a x v_a / |r_a|^2`` the rotation rate of a's orbital frame.
    Shapes broadcast over leading axes; vectors on the last axis.
    """
    r_rel = r_b_km - r_a_km
    v_rel = v_b_km_s - v_a_km_s
    w = np.cross(r_a_km, v_a_km_s) / np.einsum("...i,...i->...", r_a_km, r_a_km)[..., None]
    v_frame = v_rel - np.cross(w, r_rel)
    d2 = np.einsum("...i,...i->...", r_rel, r_rel)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.degrees(_norm(np.cross(r_rel, v_frame)) / d2)


def _frame_rate_soa(r: list[NDArray[np.float64]], v: list[NDArray[np.float64]]) -> list[NDArray[np.float64]]:
    """Rotation rate of each satellite's orbital frame, ``w = r x v / |r|^2``, as three component
    arrays shaped like ``r[0]``."""
    r2 = r[0] * r[0] + r[1] * r[1] + r[2] * r[2]
    return [(r[1] * v[2] - r[2] * v[1]) / r2, (r[2] * v[0] - r[0] * v[2]) / r2, (r[0] * v[1] - r[1] * v[0]) / r2]


def _los_rate_soa(d: list[NDArray[np.float64]], d2: NDArray[np.float64], v_rel: list[NDArray[np.float64]],
                  w: list[NDArray[np.float64]]) -> NDArray[np.float64]:
    """:func:`los_rate_deg_s` on component arrays, for either end of a link.

    With ``d = r_b - r_a`` and ``v_rel = v_b - v_a``, the rate seen from the end whose frame turns at
    ``w`` is ``|d x (v_rel - w x d)| / |d|^2`` (from b the signs of ``d`` and ``v_rel`` both flip,
    which leaves the norm unchanged).
    """
    fx = v_rel[0] - (w[1] * d[2] - w[2] * d[1])
    fy = v_rel[1] - (w[2] * d[0] - w[0] * d[2])
    fz = v_rel[2] - (w[0] * d[1] - w[1] * d[0])
    cx = d[1] * fz - d[2] * fy
    cy = d[2] * fx - d[0] * fz
    cz = d[0] * fy - d[1] * fx
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.degrees(np.sqrt(cx * cx + cy * cy + cz * cz) / d2)


def isl_states(topo: IslTopology, ephem: Any, cfg: IslConfig | None = None,
               lat_deg: NDArray[np.floating] | None = None) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """State and delay of every ISL at every step.

    Parameters
    ----------
    topo : IslTopology
        From :func:`plus_grid`.
    ephem : Ephemeris
        Needs ``r_teme_km``, ``v_teme_km_s`` (n_sat, n_t, 3), ``r_ecef_km`` (n_sat, n_t, 3), ``valid``
        (n_sat, n_t) and ``step_s``.
    cfg : IslConfig, optional
        Terminal model; default ``IslConfig()``.
    lat_deg : ndarray, (n_sat, n_t), optional
        Geodetic latitude of every satellite, deg, if the caller has it already (the plan does, for
        the timeline); else it is computed here for the ends of inter-plane links only.

    Returns
    -------
    state : ndarray, (n_isl, n_t) uint8
        :class:`Reason` code (precedence in the module docstring).
    delay_ms : ndarray, (n_isl, n_t) float32
        ``|r_b - r_a| / c`` in ms at every step, also while the link is down (0 where a position is
        missing, i.e. state INVALID, so that diffs stay quiet).
    """
    cfg = cfg or IslConfig()
    r = np.asarray(ephem.r_teme_km, dtype=np.float64)
    v = np.asarray(ephem.v_teme_km_s, dtype=np.float64)
    valid = np.asarray(ephem.valid, dtype=bool)
    n_sat, n_t = valid.shape
    n = topo.n_isl
    state = np.zeros((n, n_t), np.uint8)
    delay_ms = np.zeros((n, n_t), np.float32)
    if n == 0 or n_t == 0:
        return state, delay_ms
    if topo.pairs.max() >= n_sat:
        raise TopologyError(f"ISL table refers to satellite {int(topo.pairs.max())} but the ephemeris "
                            f"has {n_sat}")

    polar_sat = np.zeros((n_sat, n_t), bool)
    if cfg.polar_cutoff_deg is not None and np.any(topo.role == ROLE_INTER):
        # geodetic latitude costs ~1 us per satellite-step: only where an inter-plane link needs it
        ends = np.unique(topo.pairs[(topo.role == ROLE_INTER) & ~(topo.seam | topo.dropped)])
        if lat_deg is None:
            lat_ends, _lon, _alt = ecef_to_geodetic(np.asarray(ephem.r_ecef_km, dtype=np.float64)[ends])
        else:
            lat_ends = np.asarray(lat_deg)[ends]
        polar_sat[ends] = np.abs(lat_ends) > cfg.polar_cutoff_deg

    if cfg.max_range_km is not None:
        max_range = np.full(n, cfg.max_range_km)
    else:
        max_range = max_isl_range_km(topo.altitude_km, topo.altitude_km, cfg.atmosphere_margin_km)
    r_min = EARTH_RADIUS_KM + cfg.atmosphere_margin_km

    # Components as separate (n_sat, n_t) arrays: the per-link arithmetic below is then plain
    # element-wise work on 2-D blocks (np.cross and einsum on (..., 3) arrays cost ~3x more; measured
    # on 5,704 links x 600 steps).
    rc = [np.ascontiguousarray(r[..., k]) for k in range(3)]
    vc = [np.ascontiguousarray(v[..., k]) for k in range(3)] if cfg.max_slew_rate_deg_s is not None else []
    w_frame = _frame_rate_soa(rc, vc) if vc else []
    for lo in range(0, n, _BLOCK_LINKS):
        hi = min(n, lo + _BLOCK_LINKS)
        ia = topo.pairs[lo:hi, 0]
        ib = topo.pairs[lo:hi, 1]
        a = [c[ia] for c in rc]
        d = [c[ib] - x for c, x in zip(rc, a)]
        d2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
        dist = np.sqrt(d2)
        delay_ms[lo:hi] = dist / C_KM_S * 1000.0
        # closest approach of the segment to the Earth's centre
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.clip(-(a[0] * d[0] + a[1] * d[1] + a[2] * d[2]) / d2, 0.0, 1.0)
        cx, cy, cz = (x + t * y for x, y in zip(a, d))
        closest = np.sqrt(cx * cx + cy * cy + cz * cz)
        occluded = closest < r_min
        with np.errstate(invalid="ignore"):
            too_far = dist > np.where(np.isnan(max_range[lo:hi]), np.inf, max_range[lo:hi])[:, None]
        polar = (topo.role[lo:hi] == ROLE_INTER)[:, None] & (polar_sat[ia] | polar_sat[ib])
        if vc:
            v_rel = [c[ib] - c[ia] for c in vc]
            rate = np.fmax(_los_rate_soa(d, d2, v_rel, [w[ia] for w in w_frame]),
                           _los_rate_soa(d, d2, v_rel, [w[ib] for w in w_frame]))
            tracking = rate > cfg.max_slew_rate_deg_s
        else:
            tracking = np.zeros_like(occluded)
        invalid = ~(valid[ia] & valid[ib])
        s = state[lo:hi]
        # lowest precedence first; later assignments win
        s[tracking] = Reason.TRACKING
        s[polar] = Reason.POLAR
        s[too_far] = Reason.RANGE
        s[occluded] = Reason.OCCLUDED
        s[topo.seam[lo:hi]] = Reason.SEAM
        s[topo.dropped[lo:hi]] = Reason.TERMINALS
        s[invalid] = Reason.INVALID
        delay_ms[lo:hi][invalid] = 0.0

    geometric_ok = state == Reason.UP
    outage = pointing_outages(n, n_t, ephem.step_s, cfg.outage_mtbf_s, cfg.outage_mean_duration_s,
                              cfg.seed)
    outage &= geometric_ok
    acquiring = apply_acquisition(geometric_ok & ~outage, None, steps_for(cfg.acquisition_s, ephem.step_s))
    state[outage] = Reason.OUTAGE
    state[acquiring] = Reason.ACQUIRING
    return state, delay_ms


def usable_spare(topo: IslTopology, state: NDArray[np.uint8], n_sats: int) -> NDArray[np.int32]:
    """Terminals each satellite has for cross-shell links once the run's +Grid states are known.

    ``topo.spare``, plus one at each end of a +Grid link that is never usable in the whole run for
    lack of geometry (OCCLUDED, RANGE or INVALID at every step: e.g. fore/aft across a wide gap of a
    sparse real plane): such a terminal has no partner to point at, so it may serve another shell.
    Nothing changes for a satellite with no spare terminal by design (``topo.spare`` is all 0 when
    cross-shell links are off or there is one shell).

    Parameters
    ----------
    topo : IslTopology
    state : ndarray, (n_isl, n_t) uint8
        From :func:`isl_states`.
    n_sats : int

    Returns
    -------
    ndarray, (n_sats,) int32
    """
    spare = np.zeros(n_sats, np.int32) if topo.spare is None else topo.spare.astype(np.int32).copy()
    if topo.spare is None or not topo.spare.any() or state.shape[1] == 0:
        return spare
    dead_states = np.array([Reason.OCCLUDED, Reason.RANGE, Reason.INVALID], np.uint8)
    dead = np.isin(state, dead_states).all(axis=1) & ~(topo.seam | topo.dropped)
    np.add.at(spare, topo.pairs[dead].ravel(), 1)
    return spare
