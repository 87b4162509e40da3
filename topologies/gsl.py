"""Ground-to-satellite links: which satellite each gateway antenna points at, step by step.

Every antenna of every ground site is one link slot. At each step the antenna keeps its satellite or
hands over to another according to a policy, with hysteresis and optionally only at the boundaries of
fixed reconfiguration slots on a UTC grid (Starlink reassigns satellites in globally synchronised 15 s
slots). A satellite carries at most ``max_gateway_links_per_satellite`` antenna links at a time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import ConfigError, check_range
from .frames import EARTH_RADIUS_KM, geodetic_to_ecef_km
from .ground import GroundSite
from .outages import apply_acquisition, steps_for
from .timeline import C_KM_S, Reason
from .walker import MU_WGS72_KM3_S2

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_SLOT_OFFSET_S", "POLICIES", "GroundSite", "GslConfig", "GslResult", "gsl_assign",
           "handover_gaps", "link_gap_ms", "reconfiguration_boundaries", "satellite_changes"]

POLICIES = ("highest-elevation", "longest-visibility", "nearest", "spread")
SATELLITE_CHOICES = ("meshed", "any")

#: Seconds after each multiple of the slot length (counted from UTC midnight) at which Starlink's
#: reassignments fall: with 15 s slots, seconds 12, 27, 42 and 57 of every minute (sources in GslConfig).
DEFAULT_SLOT_OFFSET_S = 12.0

#: Score bonus that makes "stays visible for the whole reconfiguration slot" the first sort key.
_COVER_BONUS = 1e9


@dataclass(frozen=True)
class GslConfig:
    """How gateway antennas pick satellites.

    Attributes
    ----------
    min_elevation_deg : float
        Elevation mask, deg, [0, 90): a satellite below it is not usable. 25 deg is the mask in
        SpaceX's FCC filings for Starlink gateways (Hypatia uses it too).
    antennas : int
        Antennas per site unless the site says otherwise, 1..16. Antennas of one site always point
        at distinct satellites.
    policy : str
        ``"highest-elevation"``: the satellite highest in the sky. ``"nearest"``: the shortest slant
        range (differs from the former across shells of different altitude). ``"longest-visibility"``:
        the satellite that stays above the mask longest from now on; kept until it sets. ``"spread"``: half
        the antennas of a site (rounded up) on the highest satellites, the others spread over the sky, so
        that whichever way the routes leave the site one antenna holds a satellite that way
        (:func:`gsl_assign` gives the rule); with one antenna it is highest-elevation.
    hysteresis_deg : float
        highest-elevation: leave a still-visible satellite only for one higher by more than this, deg.
        spread: the same for the first half of the antennas; the others leave a still-visible satellite
        only for one whose least angle to the site's other antennas' satellites is larger by more than
        this, deg.
    hysteresis_km : float
        nearest: leave a still-visible satellite only for one nearer by more than this, km.
    acquisition_s : float
        Time an antenna is down (ACQUIRING) after pointing at a new satellite, s. Default 0:
        gateways usually make the new link before breaking the old one (several dishes, or phased
        arrays); set it for a single dish that must slew and re-acquire.
    reconfiguration_interval_s : float or None
        Slot length, s: handovers only at the slot boundaries, the UTC instants t where
        ``t - slot_offset_s`` is a multiple of it counted from midnight (Starlink: 15 s); the new
        satellite must stay visible for the whole slot when any such one exists. A satellite lost in
        the middle of a slot leaves the antenna idle (NO_SATELLITE) until the next boundary. None:
        handovers at any step (the default, so that scenarios without a slot grid keep their plans).
    slot_offset_s : float
        Where the slot grid starts, s after UTC midnight, [0, 86400); default 12, so 15 s slots start at
        seconds 12, 27, 42 and 57 of every minute. Measurements find Starlink's reassignments globally
        synchronised on a 15 s period: Mohan et al., "A Multifaceted Look at Starlink Performance",
        WWW 2024 (arXiv:2310.09242; "globally synchronized 15-second reconfiguration intervals"), and
        Tanveer et al., "Making Sense of Constellations: Methodologies for Understanding Starlink's
        Scheduling Algorithms" (arXiv:2307.00402: a global controller allocates satellites to
        terminals). The phase, 12 s past the minute, is the one this project's issue 11 gives from that
        literature; in the text reachable here it was not found stated as such (a terminal log in
        clarkzjw/LEOViz issue #25 shows a change between seconds 55 and 58). Ignored without a slot
        length.
    max_gateway_links_per_satellite : int
        At most this many antenna links (over all sites) on one satellite at a step, 1..64. Default 4, a
        modelling choice, not a published figure: no SpaceX filing found here states how many gateway
        links one satellite serves. Sites are served in order: an earlier site has first pick of a
        satellite in demand, a later one takes the next best (a greedy rule, not a global optimum). A
        satellite at the cap is unusable for the antennas that did not get it (NO_SATELLITE if nothing
        else is left).
    rate_mbps, loss_pct : float
        Rate (each direction) and random loss of every GSL.
    satellites : str
        ``"meshed"``: an antenna uses only satellites with at least one laser link up at that step (a
        gateway feeds the laser network; a satellite without lasers, or cut off from its partners, would
        reach nothing beyond itself). ``"any"``: bent-pipe satellites too. In a timeline with no laser
        link at all, both are the same.
    scheduling_delay_ms, framing_delay_ms : float
        Access delay beyond propagation on a gateway antenna's link, ms each way, [0, 1000]; added to its
        one-way delay while it has a satellite (as :class:`topologies.terminals.TerminalConfig`'s for
        beams). Default 0: no source stating them for the gateway (feeder) link was found
        (docs/model.md, "Access delay").
    handover_interruption_ms : float
        Time an antenna's link carries nothing after it changes from one satellite to another, ms,
        [0, 10000]; shorter than a step (checked when planning). The link stays UP in the timeline (the gap
        is shorter than a step): :func:`handover_gaps` gives where and how long, ``plan`` counts it as
        predicted loss and ``run`` drops every packet on the link for that long after the change. Default
        0, for want of a figure: measurements report loss and latency spikes at Starlink's handovers ("A
        Browser-side View of Starlink Connectivity", IMC 2022: "packet losses of up to 50% of packets,
        which appear to be correlated with handovers between satellites"; G. Huston, "A transport
        protocol's view of Starlink", APNIC blog, May 2024: some loss and latency spikes at the 15 s
        changes), but none of the texts reachable here, and no arXiv paper found, gives the length of the
        gap in ms (docs/model.md, "Handover gap").
    """

    min_elevation_deg: float = 25.0
    antennas: int = 1
    policy: str = "highest-elevation"
    hysteresis_deg: float = 5.0
    hysteresis_km: float = 50.0
    acquisition_s: float = 0.0
    reconfiguration_interval_s: float | None = None
    slot_offset_s: float = DEFAULT_SLOT_OFFSET_S
    max_gateway_links_per_satellite: int = 4
    rate_mbps: float = 100.0
    loss_pct: float = 0.0
    satellites: str = "meshed"
    scheduling_delay_ms: float = 0.0
    framing_delay_ms: float = 0.0
    handover_interruption_ms: float = 0.0

    @property
    def access_delay_ms(self) -> float:
        """Scheduling plus framing delay, ms each way."""
        return self.scheduling_delay_ms + self.framing_delay_ms

    def __post_init__(self) -> None:
        if self.satellites not in SATELLITE_CHOICES:
            raise ConfigError(f"satellites must be one of {', '.join(SATELLITE_CHOICES)}, got {self.satellites!r}",
                              key="satellites")
        check_range("min_elevation_deg", self.min_elevation_deg, 0.0, 90.0, hi_open=True)
        if isinstance(self.antennas, bool) or not isinstance(self.antennas, int) or not 1 <= self.antennas <= 16:
            raise ConfigError(f"antennas must be an integer in [1, 16], got {self.antennas!r}", key="antennas")
        if self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}", key="policy")
        check_range("hysteresis_deg", self.hysteresis_deg, 0.0, 90.0)
        check_range("hysteresis_km", self.hysteresis_km, 0.0, 1e5)
        check_range("acquisition_s", self.acquisition_s, 0.0, 3600.0)
        check_range("reconfiguration_interval_s", self.reconfiguration_interval_s, 0.0, 86400.0, none_ok=True,
                lo_open=True)
        check_range("slot_offset_s", self.slot_offset_s, 0.0, 86400.0, hi_open=True)
        check_range("max_gateway_links_per_satellite", self.max_gateway_links_per_satellite, 1, 64, integer=True)
        check_range("rate_mbps", self.rate_mbps, 0.0, 1e6, lo_open=True)
        check_range("loss_pct", self.loss_pct, 0.0, 100.0)
        check_range("scheduling_delay_ms", self.scheduling_delay_ms, 0.0, 1000.0)
        check_range("framing_delay_ms", self.framing_delay_ms, 0.0, 1000.0)
        check_range("handover_interruption_ms", self.handover_interruption_ms, 0.0, 10000.0)


@dataclass(frozen=True)
class GslResult:
    """Gateway antenna link slots over time.

    Attributes
    ----------
    sites : tuple of GroundSite
    site, antenna : ndarray, (n_slots,) int32
        Site index into ``sites`` and antenna number within the site, per link slot.
    peer : ndarray, (n_slots, n_t) int32
        Satellite index, -1 when the antenna has none.
    state : ndarray, (n_slots, n_t) uint8
        UP, ACQUIRING, NO_SATELLITE (nothing usable above the mask, or every one there at its cap of
        gateway links) or INVALID (no satellite has a
        valid position at that step).
    delay_ms : ndarray, (n_slots, n_t) float32
        Slant range / c, ms; 0 without a peer.
    elevation_deg : ndarray, (n_slots, n_t) float32
        Elevation of the peer, deg; NaN without a peer.
    """

    sites: tuple[GroundSite, ...]
    site: NDArray[np.int32]
    antenna: NDArray[np.int32]
    peer: NDArray[np.int32]
    state: NDArray[np.uint8]
    delay_ms: NDArray[np.float32]
    elevation_deg: NDArray[np.float32]

    @property
    def handovers_per_slot(self) -> NDArray[np.int64]:
        """Number of peer changes of each link slot (gaining, losing or switching a satellite)."""
        return np.count_nonzero(np.diff(self.peer, axis=1), axis=1)

    @property
    def n_handovers(self) -> int:
        """Peer changes over all link slots."""
        return int(self.handovers_per_slot.sum())


def reconfiguration_boundaries(start: datetime, step_s: float, n_steps: int, interval_s: float | None,
                               offset_s: float = DEFAULT_SLOT_OFFSET_S) -> NDArray[np.bool_]:
    """Steps at which a handover may happen, (n_steps,) bool.

    Step 0 always; then the first step at or after each slot boundary: the instants ``offset_s`` plus a
    multiple of ``interval_s`` seconds after midnight UTC (12, 27, 42, 57 s past every minute for 15 s
    slots at the default offset). None: every step.

    Examples
    --------
    >>> start = datetime(2026, 8, 22, 2, 7, 5, tzinfo=UTC)  # 02:07:05 UTC
    >>> np.flatnonzero(reconfiguration_boundaries(start, 1.0, 40, 15.0)).tolist()  # :12, :27, :42
    [0, 7, 22, 37]
    """
    if interval_s is None:
        return np.ones(n_steps, bool)
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    midnight = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    t0_s = (start - midnight).total_seconds() - offset_s
    t = t0_s + np.arange(n_steps) * step_s
    slot = np.floor(t / interval_s + 1e-9)
    out = np.ones(n_steps, bool)
    out[1:] = slot[1:] != slot[:-1]
    return out


def satellite_changes(peer: NDArray[np.integer]) -> NDArray[np.bool_]:
    """Where a ground link moves from one satellite to another, (n_slots, n_t) bool.

    True at step k when the slot held a satellite at step k - 1 and holds a different one at k (gaining a
    satellite after none, or losing one, is not a change of satellite; step 0 never is).

    Examples
    --------
    >>> satellite_changes(np.array([[3, 3, 5, -1, 7, 8]])).astype(int).tolist()
    [[0, 0, 1, 0, 0, 1]]
    """
    peer = np.asarray(peer)
    out = np.zeros(peer.shape, bool)
    out[:, 1:] = (peer[:, 1:] != peer[:, :-1]) & (peer[:, 1:] >= 0) & (peer[:, :-1] >= 0)
    return out


def handover_gaps(tl: Any) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """The handover gaps of a timeline: every ground link's change of satellite, with how long it carries
    nothing from the start of that step.

    Parameters
    ----------
    tl : Timeline
        Its gateway and terminal nodes carry ``handover_interruption_ms`` in their ``info`` (written by
        :func:`topologies.plan.plan_scenario`; absent, as in timelines of earlier versions: 0).

    Returns
    -------
    links, steps : ndarray, (n_gaps,) int64
        Link slot and step of each change (the gap spans ``[steps * step_s, steps * step_s + gap_ms / 1000)``
        seconds of the timeline).
    gap_ms : ndarray, (n_gaps,) float64
        Length of each gap, ms (> 0; changes of links with no gap are left out).
    """
    from .timeline import LINK_CLASSES

    per_link = link_gap_ms(tl)
    ground = np.flatnonzero((tl.link_class == LINK_CLASSES.index("gsl")) & (per_link > 0))
    if not len(ground):
        e = np.empty(0, np.int64)
        return e, e, np.empty(0, np.float64)
    rows, steps = np.nonzero(satellite_changes(tl.peer[ground]))
    links = ground[rows]
    return links.astype(np.int64), steps.astype(np.int64), per_link[links]


def link_gap_ms(tl: Any) -> NDArray[np.float64]:
    """``handover_interruption_ms`` of each link slot's near node (gateway or terminal; 0 for any other), ms,
    (n_links,)."""
    per_node = np.array([float(n.info.get("handover_interruption_ms", 0.0) or 0.0) for n in tl.nodes])
    return per_node[np.asarray(tl.link_a, np.int64)] if len(per_node) else np.zeros(len(tl.link_a))


def _coarse_visibility(r_t: NDArray[np.float64], valid_t: NDArray[np.bool_], min_elevation_deg: float,
                       step_s: float, coarse_s: float) -> Any:
    """A screen for :func:`gsl_assign`: ``screen(up)`` gives the satellites (column indices) that may be
    above the mask of the site whose local vertical is the unit vector ``up`` at some step.

    A satellite at orbit radius r is above elevation e only within the Earth central angle
    lambda = acos(R cos(e) / r) - e of the site (R the Earth's radius; a site above sea level only narrows
    it). Checked at steps ``coarse_s`` apart (and the last), the cone is widened by the angle a satellite
    can sweep in that time, seen from the Earth's centre in the rotating frame (orbital speed at the lowest
    radius plus the ground's rotation, with a margin): no satellite visible in between can be missed.
    """
    n_t, n_sat, _ = r_t.shape
    every = max(1, int(coarse_s // step_s)) if step_s > 0 else 1
    ks = np.unique(np.r_[np.arange(0, n_t, every), n_t - 1])
    rc = r_t[ks]  # (n_k, n_sat, 3)
    norm = np.sqrt(np.einsum("tsk,tsk->ts", rc, rc))
    ok = valid_t[ks] & (norm > 0)
    unit = np.where(ok[..., None], rc / np.where(norm > 0, norm, 1.0)[..., None], 0.0)
    if not ok.any():
        return lambda up: np.empty(0, np.int64)
    r_max, r_min = float(norm[ok].max()), float(norm[ok].min())
    e = math.radians(min_elevation_deg)
    # 6,350 km: below the polar radius, so the cone holds for any site near sea level; 0.5 deg more covers
    # the geodetic vertical's tilt from the geocentric direction (<= 0.19 deg) and sites off the ellipsoid
    lam = math.acos(min(1.0, 6350.0 * math.cos(e) / r_max)) - e + math.radians(0.5)
    # speed in the rotating frame: circular speed at the lowest radius (x1.2 for eccentric orbits) plus the
    # frame's rotation (<= 0.51 km/s at 7,000 km)
    speed_km_s = math.sqrt(MU_WGS72_KM3_S2 / min(r_min, EARTH_RADIUS_KM + 100.0)) * 1.2 + 0.6
    sweep = (every * step_s) * speed_km_s / r_min
    cos_cone = math.cos(min(math.pi, lam + sweep))
    flat = unit.reshape(-1, 3)

    def screen(up: NDArray[np.float64]) -> NDArray[np.int64]:
        near = (flat @ up).reshape(len(ks), n_sat) >= cos_cone
        return np.flatnonzero((near & ok).any(axis=0))

    return screen


def _steps_to_next(boundary: NDArray[np.bool_]) -> NDArray[np.int64]:
    """For each step, how many steps until the next boundary (the rest of its slot, itself included)."""
    n = len(boundary)
    idx = np.arange(n)
    nxt = np.where(boundary, idx, n)
    nxt[0] = n  # step 0 opens the first slot; look for the next one
    nxt = np.minimum.accumulate(nxt[::-1])[::-1]
    # nxt[k] is the first boundary >= k; we need the first boundary > k
    nb = np.empty(n, np.int64)
    nb[:-1] = nxt[1:]
    nb[-1] = n
    return nb - idx


def _spread_step(cur: list[int], k: int, use_k: NDArray[np.bool_], keep: NDArray[np.int64],
                 rel: NDArray[np.float64], rng: NDArray[np.float64], sin_el: NDArray[np.float64],
                 covers: NDArray[np.bool_] | None, hysteresis_deg: float) -> None:
    """One decision step of the ``"spread"`` policy for one site, in place on ``cur`` (column positions of the
    antennas' satellites, -1 for none); the rule is in :func:`gsl_assign`'s notes.

    ``rel`` (n_t, n_cand, 3) km are the vectors from the site to its screened candidates, ``keep`` the
    candidates that are ever visible (the columns), ``rng`` and ``sin_el`` (n_t, n_cols) their ranges and
    elevation sines, ``covers`` (n_t, n_cols) whether each stays usable to the end of the slot (None: no
    slot grid)."""
    vis = np.flatnonzero(use_k)
    a = len(cur)
    if not len(vis):
        cur[:] = [-1] * a
        return
    # directions from the site to the usable satellites, and the cosines of the angles between them
    u = rel[k, keep[vis]] / rng[k, vis][:, None]
    cos = np.clip(u @ u.T, -1.0, 1.0)  # (n_vis, n_vis); a few tens of satellites in view
    cur_a = np.asarray(cur)
    held_now = (cur_a >= 0) & use_k[np.maximum(cur_a, 0)]
    rows = np.where(held_now, np.searchsorted(vis, cur_a), -1).tolist()  # -1: none, or lost since the last step
    # cosines to each antenna's satellite, a column per antenna (-2, below any cosine, for none): the least
    # angle to the others is then one max over the columns but one (on the 2026 set, ~50 satellites in view
    # and 8 antennas, 240 to 430 us a site and decision step on this shared machine)
    m = np.full((len(vis), a), -2.0)
    have = [i for i in range(a) if rows[i] >= 0]
    m[:, have] = cos[:, [rows[i] for i in have]]
    taken = np.zeros(len(vis), bool)
    taken[[rows[i] for i in have]] = True
    not_pref = ~covers[k, vis] if covers is not None else np.zeros(len(vis), bool)
    neg_el = -sin_el[k, vis]
    n_held = len(have)
    # the first half (rounded up) take the highest satellites, as highest-elevation: a terminal near the
    # gateway reaches it through the satellites overhead (without them, on Starlink's gateways and the
    # terminals of examples/starlink-access.toml, Manila's median RTT to its PoP went from 10.7 to 36.6 ms)
    anchors = (a + 1) // 2
    for j in range(a):
        rc = rows[j]
        if rc >= 0:
            taken[rc] = False
            m[:, j] = -2.0
            n_held -= 1
        # spreading: cosine of the least angle to the other antennas' satellites; else minus the elevation sine
        spreads = j >= anchors and n_held > 0
        worst = m.max(axis=1) if spreads else neg_el
        score = np.where(taken, np.inf, worst)
        first = np.where(not_pref, np.inf, score)  # cover the slot first (as _COVER_BONUS does elsewhere)
        b = int(np.argmin(first))
        if first[b] == np.inf:
            b = int(np.argmin(score))
            if score[b] == np.inf:  # every usable satellite held by the other antennas
                rows[j] = -1
                continue
        new = b
        if rc >= 0 and b != rc:
            if not_pref[b] != not_pref[rc]:
                new = rc if not_pref[b] else b
            elif spreads:
                gain_deg = math.degrees(math.acos(worst[b]) - math.acos(worst[rc]))
                new = b if gain_deg > hysteresis_deg else rc
            else:
                gain_deg = math.degrees(math.asin(min(1.0, -worst[b])) - math.asin(min(1.0, -worst[rc])))
                new = b if gain_deg > hysteresis_deg else rc
        rows[j] = new
        taken[new] = True
        m[:, j] = cos[:, new]
        n_held += 1
    cur[:] = [int(vis[r]) if r >= 0 else -1 for r in rows]


def gsl_assign(sites: Sequence[GroundSite], ephem: Any, cfg: GslConfig | None = None,
               coarse_s: float = 30.0, meshed: NDArray[np.bool_] | None = None,
               site_mask: Callable[[int, NDArray[np.float64], NDArray[np.bool_]], NDArray[np.bool_]] | None = None,
               capped: bool = True,
               site_cost_ms: Callable[[int, NDArray[np.int64]], NDArray[np.float64]] | None = None) -> GslResult:
    """Assign satellites to every antenna of every site at every step.

    Parameters
    ----------
    sites : sequence of GroundSite
    ephem : Ephemeris
        Needs ``r_ecef_km`` (n_sat, n_t, 3), ``valid`` (n_sat, n_t), ``start`` and ``step_s``.
    cfg : GslConfig, optional
    coarse_s : float
        Satellites are first screened every ``coarse_s`` seconds against each site's visibility cone
        widened by the farthest a satellite can move in that time; only those that pass are tested at
        every step. The result does not depend on it (a screen, not an approximation).
    meshed : ndarray, (n_sat, n_t) bool, optional
        Satellites with a laser link up at each step. With ``cfg.satellites == "meshed"`` antennas use only
        those (unless none is ever meshed); ignored otherwise.
    site_mask : callable, optional
        A further visibility rule per site: ``site_mask(site_index, rel_km, where)`` gets the vectors from
        the site to its candidate satellites, Earth-fixed km, shape (n_t, n_cand, 3), and ``where``
        (n_t, n_cand) bool, the entries above the mask; it returns (n_t, n_cand) bool, True where the
        satellite may be used (only the ``where`` entries are read). User terminals pass their GSO arc
        rule here (:func:`topologies.terminals.gso_arc_mask`).
    capped : bool
        Hold ``cfg.max_gateway_links_per_satellite`` across these sites (gateways). False for user
        terminals, whose links do not count against the gateway cap.
    site_cost_ms : callable, optional
        Replaces ``cfg.policy``: ``site_cost_ms(site_index, sats)`` gives, for satellite indices ``sats``
        (n_cand,), the one-way delay onwards from each satellite at every step, ms, shape (n_t, n_cand)
        (inf where it reaches nothing). The site then takes the satellite with the least slant delay plus
        that cost, and leaves a still-usable one only for one better by more than ``cfg.hysteresis_km`` / c
        (the user terminals' ``pop-delay`` policy, :func:`topologies.terminals.terminal_assign`).

    Returns
    -------
    GslResult
        Link slots ordered by site, then antenna.

    Notes
    -----
    Policy ``"spread"``: at each step where antennas may change (every step, or each slot boundary), the
    antennas of a site are visited in order, each choosing among the usable satellites the site's other
    antennas do not hold. The first half (rounded up) take the highest, as highest-elevation does (leaving
    a still-usable satellite only for one higher by more than ``cfg.hysteresis_deg``): the satellites
    overhead carry the short paths to terminals near the gateway. Each of the others takes the satellite
    whose direction from the site makes the largest least angle with the directions of the satellites all
    other antennas hold (a greedy max-min, i.e. farthest-point, choice), and keeps its current one unless
    that best one widens the least angle by more than ``cfg.hysteresis_deg``. On a slot grid a satellite
    that stays usable for the whole slot is preferred first, as for every policy. The spread half ends up
    round the edge of the visible cap, each a different way; highest-elevation alone gives the few highest
    satellites, bunched overhead, and a route leaving towards a far site must then cross the laser grid
    from there.
    """
    cfg = cfg or GslConfig()
    sites = tuple(sites)
    r = np.asarray(ephem.r_ecef_km, dtype=np.float64)
    valid = np.asarray(ephem.valid, dtype=bool)
    n_sat, n_t = valid.shape
    n_ant = [s.antennas or cfg.antennas for s in sites]
    n_slots = int(sum(n_ant))
    site_idx = np.repeat(np.arange(len(sites), dtype=np.int32), n_ant)
    ant_idx = np.concatenate([np.arange(a, dtype=np.int32) for a in n_ant]) if n_ant else np.empty(0, np.int32)
    peer = np.full((n_slots, n_t), -1, np.int32)
    rng_km = np.zeros((n_slots, n_t), np.float64)
    elev = np.full((n_slots, n_t), np.nan, np.float32)
    if n_slots == 0 or n_t == 0:
        return GslResult(sites, site_idx, ant_idx, peer, np.zeros((n_slots, n_t), np.uint8),
                         np.zeros((n_slots, n_t), np.float32), elev)

    # time-major positions so each step's satellites are contiguous: (n_t, n_sat, 3)
    r_t = np.ascontiguousarray(r.transpose(1, 0, 2))
    valid_t = np.ascontiguousarray(valid.T)
    r_t = np.where(valid_t[..., None], r_t, 0.0)
    sin_mask = math.sin(math.radians(cfg.min_elevation_deg))
    boundary = reconfiguration_boundaries(ephem.start, ephem.step_s, n_t, cfg.reconfiguration_interval_s,
                                          cfg.slot_offset_s)
    slotted = cfg.reconfiguration_interval_s is not None
    slot_left = _steps_to_next(boundary)
    any_valid = np.asarray(valid_t.any(axis=1), dtype=bool)
    usable_t = valid_t
    if cfg.satellites == "meshed" and meshed is not None and np.any(meshed):
        usable_t = valid_t & np.ascontiguousarray(np.asarray(meshed, bool).T)
    idx_t = np.arange(n_t)
    coarse = _coarse_visibility(r_t, valid_t, cfg.min_elevation_deg, ephem.step_s, coarse_s)
    cap = cfg.max_gateway_links_per_satellite
    # antenna links per satellite and step, of the sites served so far; not needed while the cap cannot bind
    # (uint8: the cap is at most 64; 24 h at 15 s steps on 10^4 satellites is 62 MB)
    load = np.zeros((n_t, n_sat), np.uint8) if capped and n_slots > cap else None

    row = 0
    for si, site in enumerate(sites):
        lat, lon = math.radians(site.lat_deg), math.radians(site.lon_deg)
        up = np.array([math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)])
        pos = geodetic_to_ecef_km(site.lat_deg, site.lon_deg, site.alt_m)
        # only satellites that come near the site's visibility cone at some step (a few hundred of 10^4)
        cand = coarse(up)
        rel = r_t[:, cand, :] - pos  # (n_t, n_cand, 3)
        d2 = np.einsum("tsk,tsk->ts", rel, rel)
        h = rel @ up  # height of the satellite above the site's horizon plane, km
        # visible: valid and h >= sin(mask) * range, tested without a square root
        vis_all = usable_t[:, cand] & (h >= 0.0) & (h * h >= (sin_mask * sin_mask) * d2)
        if site_mask is not None:
            vis_all &= site_mask(si, rel, vis_all)
        keep = np.flatnonzero(vis_all.any(axis=0))
        cols = cand[keep]
        vis = vis_all[:, keep]
        rng = np.sqrt(np.maximum(d2[:, keep], 1e-12))
        sin_el = h[:, keep] / rng
        # steps each satellite stays visible from step k on (k included)
        nf = np.where(vis, n_t, idx_t[:, None])
        nf = np.minimum.accumulate(nf[::-1], axis=0)[::-1]
        rem = nf - idx_t[:, None]
        if site_cost_ms is not None:
            onward = np.asarray(site_cost_ms(si, cols), np.float64)
            # a satellite that reaches nothing onwards still beats none: last, nearest first
            onward = np.where(np.isfinite(onward), onward, 1e6)
            score = -(rng / C_KM_S * 1000.0 + onward)
        elif cfg.policy in ("highest-elevation", "spread"):
            # spread with several antennas ranks by the angles between them, step by step in _spread_step;
            # with one antenna it is highest-elevation
            score = sin_el.copy()
        elif cfg.policy == "nearest":
            score = -rng
        else:
            score = rem + 0.5 * sin_el  # ties in remaining time go to the higher satellite
        covers = rem >= slot_left[:, None]
        if slotted:
            score = score + np.where(covers, _COVER_BONUS, 0.0)
        usable = vis
        if load is not None:
            # a satellite already carrying `cap` links of earlier sites is out of reach at that step; in a
            # slotted plan earlier sites change satellites only at boundaries, so one that is free at a
            # boundary stays free for the slot
            usable = vis & (load[:, cols] < cap)
        score = np.where(usable, score, -np.inf)
        a = n_ant[si]
        n_cols = len(cols)
        if n_cols == 0:
            row += a
            continue
        spread = site_cost_ms is None and cfg.policy == "spread" and a > 1
        if spread:
            top = np.zeros((n_t, 0), np.int64)  # not used: _spread_step decides
        elif a == 1:
            top = np.argmax(score, axis=1)[:, None]
        else:
            k = min(a, n_cols)
            part = np.argpartition(-score, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(score, part, axis=1), axis=1)
            top = np.take_along_axis(part, order, axis=1)
        top_ok = np.isfinite(np.take_along_axis(score, top, axis=1))
        top_l = np.where(top_ok, top, -1).tolist()
        cur = [-1] * a
        out = peer[row:row + a]
        hist: list[list[int]] = []
        # one row view per step, steps collected in a list: 214 sites x 8 antennas x 600 steps took 6.9 s
        # with 2-D scalar indexing and a column write per step, 5.6 s so
        boundary_l = boundary.tolist()
        for k in range(n_t):
            use_k = usable[k]
            decide = not slotted or boundary_l[k]
            if spread:
                if decide:
                    _spread_step(cur, k, use_k, keep, rel, rng, sin_el, covers if slotted else None,
                                 cfg.hysteresis_deg)
                else:
                    cur[:] = [c if c >= 0 and use_k[c] else -1 for c in cur]
                hist.append(cur.copy())
                continue
            for j in range(a):
                c = cur[j]
                if c >= 0 and not use_k[c]:
                    c = -1
                if not decide:
                    cur[j] = c
                    continue
                others = cur[:j] + cur[j + 1:]
                b = next((s for s in top_l[k] if s >= 0 and s not in others), -1)
                if c < 0 or b < 0 or b == c:
                    new = b if c < 0 else c
                elif slotted and covers[k, b] and not covers[k, c]:
                    new = b
                elif slotted and covers[k, c] and not covers[k, b]:
                    new = c
                elif site_cost_ms is not None:
                    new = b if score[k, b] - score[k, c] > cfg.hysteresis_km / C_KM_S * 1000.0 else c
                elif cfg.policy in ("highest-elevation", "spread"):
                    gain_deg = math.degrees(math.asin(min(1.0, sin_el[k, b])) - math.asin(min(1.0, sin_el[k, c])))
                    new = b if gain_deg > cfg.hysteresis_deg else c
                elif cfg.policy == "nearest":
                    new = b if rng[k, c] - rng[k, b] > cfg.hysteresis_km else c
                else:  # longest-visibility: keep a satellite until it sets
                    new = c
                cur[j] = new
            hist.append(cur.copy())
        out[:] = np.array(hist, dtype=np.int32).T
        have = out >= 0
        tk = np.broadcast_to(idx_t, out.shape)
        sat = np.where(have, out, 0)
        rng_km[row:row + a] = np.where(have, rng[tk, sat], 0.0)
        elev[row:row + a] = np.where(have, np.degrees(np.arcsin(np.clip(sin_el[tk, sat], -1, 1))), np.nan)
        out[have] = cols[out[have]]  # column positions -> satellite indices
        if load is not None:
            load[tk[have], out[have]] += 1  # a site's antennas hold distinct satellites: no repeated index
        row += a

    have = peer >= 0
    previous = np.empty_like(peer)
    previous[:, 0] = peer[:, 0]
    previous[:, 1:] = peer[:, :-1]
    acquiring = apply_acquisition(have, have & (peer != previous), steps_for(cfg.acquisition_s, ephem.step_s))
    state = np.where(have, Reason.UP, np.where(any_valid[None, :], Reason.NO_SATELLITE, Reason.INVALID))
    state = np.where(acquiring, Reason.ACQUIRING, state).astype(np.uint8)
    delay_ms = (rng_km / C_KM_S * 1000.0).astype(np.float32)
    result = GslResult(sites, site_idx, ant_idx, peer, state, delay_ms, elev)
    log.debug("GSL: %d slots, %d handovers", n_slots, result.n_handovers)
    return result
