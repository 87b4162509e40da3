"""Cross-shell laser links: spare terminals join satellites of different shells, partner by partner.

The +Grid (:mod:`topologies.isl`) keeps every link inside one shell, so a constellation of several
shells is several islands joined only through the ground. Here the terminals the +Grid leaves free
(``IslTopology.spare``) link satellites of different shells wherever geometry allows:

* **Start.** At every step, each free terminal looks for a partner among the free terminals of the
  other shells: the ``_K_NEAREST`` nearest of each other shell, found with a k-d tree
  (:class:`scipy.spatial.cKDTree`, built per step on the free satellites of each shell, never all
  pairs). A candidate is kept only if the link is feasible at every step of the next ``min_hold_s``
  (or until the scenario ends): both positions valid, within range, line of sight above the Earth
  plus ``atmosphere_margin_km``, line-of-sight rate within ``max_slew_rate_deg_s``, the same checks
  as a +Grid link. Candidates are then matched greedily, each terminal at most once, slowest
  relative motion first (in 0.1 km/s bins), then shortest, then by satellite index: deterministic
  for a scenario. A link lasts about (range left) / (relative speed), so the slow pairs first means
  fewer acquisitions than nearest first. In that order, every pair of shells first gets up to
  ``MIN_LINKS_PER_SHELL_PAIR`` links, so that no shell is left an island because its neighbours'
  terminals all went to a closer shell; searches repeat at a step until nothing more pairs up.
* **Hold.** A link is kept while it stays feasible, and ends at the first step it is not; its
  terminals are free again at that step.
* **Acquire.** Every new partner costs ``acquisition_s`` (state ACQUIRING) from the link's first
  step; links present at step 0 are taken as already acquired (the run starts in steady state, as for
  the +Grid).

Each link is carried by a link *slot* owned by its lower-indexed satellite (``link_a``); a slot's
far end (``peer``) changes as the terminal takes new partners, like a gateway antenna's, and is -1
(state NO_PARTNER) while it has none. A satellite gets as many slots as it ever owns links at once,
so the emulator builds only what is used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .frames import EARTH_RADIUS_KM
from .outages import steps_for
from .timeline import C_KM_S, Reason

log = logging.getLogger(__name__)

#: Candidates per free terminal and other shell. Four nearest are enough for the greedy matching to
#: find a partner whenever one is free nearby; more only costs window checks.
_K_NEAREST = 4
#: Partner-search rounds per step at most (each round searches only the satellites still free; two or
#: three leave nothing more to pair on the 2026 set).
MAX_ROUNDS = 8
#: Links each pair of shells gets first where geometry allows, before the rest go nearest first (five
#: Walker shells of 2019's Phase I with a fifth terminal each: without it the three polar and 70 deg shells
#: joined each other but not the two 53 deg ones, whose spare terminals all paired across those two).
MIN_LINKS_PER_SHELL_PAIR = 8
#: A link's life is looked ahead this many steps at a time, for this many links at a time (temporaries
#: of a few MB).
_CHUNK_STEPS = 128
_BLOCK_LINKS = 1024


@dataclass(frozen=True)
class CrossShellLinks:
    """Cross-shell link slots over time.

    Attributes
    ----------
    owner : ndarray, (n_slots,) int32
        Satellite that owns each slot (its near end, ``link_a``).
    peer : ndarray, (n_slots, n_t) int32
        Partner satellite, -1 when the slot has none.
    state : ndarray, (n_slots, n_t) uint8
        UP, ACQUIRING or NO_PARTNER.
    delay_ms : ndarray, (n_slots, n_t) float32
        Distance / c, ms; 0 without a partner.
    links : ndarray, (n_links, 4) int64
        Every link: satellite a (owner), satellite b, first step, end step (exclusive).
    stats : dict
        For the plan's report (see :func:`cross_shell_stats`).
    """

    owner: NDArray[np.int32]
    peer: NDArray[np.int32]
    state: NDArray[np.uint8]
    delay_ms: NDArray[np.float32]
    links: NDArray[np.int64]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def n_slots(self) -> int:
        return len(self.owner)


def _norm(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.sqrt(np.einsum("...i,...i->...", x, x))


@dataclass(frozen=True)
class _Geometry:
    """What the feasibility test needs, shared by every call."""

    r: NDArray[np.float64]  # (n_sat, n_t, 3) TEME km
    v: NDArray[np.float64]
    valid: NDArray[np.bool_]
    alt_km: NDArray[np.float64]  # nominal altitude of each satellite's shell
    max_range_km: float | None
    margin_km: float
    max_rate_deg_s: float | None

    def feasible(self, ia: NDArray[np.int64], ib: NDArray[np.int64], t0: int, t1: int) -> NDArray[np.bool_]:
        """(n, t1 - t0) bool: the links ``ia[k]``-``ib[k]`` are usable at steps t0..t1-1."""
        from .isl import _frame_rate_soa, _los_rate_soa, max_isl_range_km

        ra, rb = self.r[ia, t0:t1], self.r[ib, t0:t1]
        d = rb - ra
        d2 = np.einsum("...i,...i->...", d, d)
        dist = np.sqrt(d2)
        if self.max_range_km is not None:
            limit = np.full(len(ia), self.max_range_km)
        else:
            limit = max_isl_range_km(self.alt_km[ia], self.alt_km[ib], self.margin_km)
        with np.errstate(invalid="ignore", divide="ignore"):
            s = np.clip(-np.einsum("...i,...i->...", ra, d) / d2, 0.0, 1.0)
            closest = _norm(ra + s[..., None] * d)
            ok = (self.valid[ia, t0:t1] & self.valid[ib, t0:t1] & (dist <= limit[:, None])
                  & (closest >= EARTH_RADIUS_KM + self.margin_km))
            if self.max_rate_deg_s is not None:
                # component arrays, as in isl_states (np.cross on (..., 3) costs ~3x more)
                va, vb = self.v[ia, t0:t1], self.v[ib, t0:t1]
                dc = [d[..., k] for k in range(3)]
                v_rel = [vb[..., k] - va[..., k] for k in range(3)]
                w_a = _frame_rate_soa([ra[..., k] for k in range(3)], [va[..., k] for k in range(3)])
                w_b = _frame_rate_soa([rb[..., k] for k in range(3)], [vb[..., k] for k in range(3)])
                rate = np.fmax(_los_rate_soa(dc, d2, v_rel, w_a), _los_rate_soa(dc, d2, v_rel, w_b))
                ok &= rate <= self.max_rate_deg_s
        return np.asarray(ok, dtype=bool)

    def end_of(self, ia: NDArray[np.int64], ib: NDArray[np.int64], t_from: int) -> NDArray[np.int64]:
        """(n,) the first step >= ``t_from`` at which each link is not usable (n_t if none).

        Looked ahead in chunks of steps and blocks of links, so each link's whole life costs a few
        large array operations instead of one small one per step."""
        n_t = self.valid.shape[1]
        end = np.full(len(ia), n_t, np.int64)
        for lo in range(0, len(ia), _BLOCK_LINKS):
            todo = np.arange(lo, min(len(ia), lo + _BLOCK_LINKS))
            t = t_from
            while len(todo) and t < n_t:
                t1 = min(n_t, t + _CHUNK_STEPS)
                bad = ~self.feasible(ia[todo], ib[todo], t, t1)
                hit = bad.any(axis=1)
                end[todo[hit]] = t + bad[hit].argmax(axis=1)
                todo = todo[~hit]
                t = t1
        return end

    @property
    def search_radius_km(self) -> float:
        if self.max_range_km is not None:
            return float(self.max_range_km)
        from .isl import max_isl_range_km

        top = float(np.nanmax(self.alt_km)) if np.isfinite(self.alt_km).any() else 2000.0
        return float(max_isl_range_km(top, top, self.margin_km))


def _candidates(geo: _Geometry, free_sats: NDArray[np.int64], shell: NDArray[np.int64], t: int
                ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """Candidate pairs (a, b, distance km) between free satellites of different shells at step t."""
    from scipy.spatial import cKDTree

    pos = geo.r[free_sats, t]
    where = {int(k): np.flatnonzero(shell[free_sats] == k) for k in np.unique(shell[free_sats])}
    keys = list(where)
    radius = geo.search_radius_km
    ca: list[NDArray[np.int64]] = []
    cb: list[NDArray[np.int64]] = []
    cd: list[NDArray[np.float64]] = []
    trees: dict[int, Any] = {}
    for x in range(len(keys)):
        for y in range(x + 1, len(keys)):
            # query the smaller group against the larger one's tree
            small, large = (keys[x], keys[y]) if len(where[keys[x]]) <= len(where[keys[y]]) else (keys[y], keys[x])
            if large not in trees:
                trees[large] = cKDTree(pos[where[large]])
            k = min(_K_NEAREST, len(where[large]))
            d, j = trees[large].query(pos[where[small]], k=k, distance_upper_bound=radius)
            d = d.reshape(len(where[small]), k)
            j = j.reshape(len(where[small]), k)
            hit = np.isfinite(d)
            rows = np.broadcast_to(np.arange(len(where[small]))[:, None], hit.shape)[hit]
            a = free_sats[where[small][rows]]
            b = free_sats[where[large][j[hit]]]
            ca.append(np.minimum(a, b))
            cb.append(np.maximum(a, b))
            cd.append(d[hit])
    if not ca:
        e = np.empty(0, np.int64)
        return e, e.copy(), np.empty(0)
    return np.concatenate(ca), np.concatenate(cb), np.concatenate(cd)


def cross_shell_links(spare: NDArray[np.integer], shell: NDArray[np.integer], altitudes_km: Any,
                      ephem: Any, cfg: Any) -> CrossShellLinks:
    """Cross-shell links of every spare terminal at every step (rules in the module docstring).

    Parameters
    ----------
    spare : ndarray, (n_sats,) int
        Terminals each satellite has free for cross-shell links (``IslTopology.spare``).
    shell : ndarray, (n_sats,) int
        Shell index of each satellite.
    altitudes_km : sequence of float
        Nominal altitude per shell, km (for the default range limit).
    ephem : Ephemeris
        ``r_teme_km``, ``v_teme_km_s`` (n_sat, n_t, 3), ``valid`` (n_sat, n_t), ``step_s``.
    cfg : IslConfig
        ``max_range_km``, ``atmosphere_margin_km``, ``max_slew_rate_deg_s``, ``min_hold_s``,
        ``acquisition_s``.

    Returns
    -------
    CrossShellLinks
    """
    r = np.asarray(ephem.r_teme_km, dtype=np.float64)
    v = np.asarray(ephem.v_teme_km_s, dtype=np.float64)
    valid = np.asarray(ephem.valid, dtype=bool)
    n_sat, n_t = valid.shape
    spare_i: NDArray[np.int64] = np.asarray(spare, dtype=np.int64)
    shell_i: NDArray[np.int64] = np.asarray(shell, dtype=np.int64)
    spare, shell = spare_i, shell_i
    alts = np.asarray(altitudes_km, dtype=np.float64)
    geo = _Geometry(r, v, valid, alts[shell] if n_sat else np.empty(0), cfg.max_range_km,
                    cfg.atmosphere_margin_km, cfg.max_slew_rate_deg_s)
    hold = max(1, steps_for(cfg.min_hold_s, ephem.step_s))
    acq = steps_for(cfg.acquisition_s, ephem.step_s)
    sats = np.flatnonzero(spare > 0)
    free = spare.copy()
    act_a = np.empty(0, np.int64)
    act_b = np.empty(0, np.int64)
    act_t0 = np.empty(0, np.int64)
    act_t1 = np.empty(0, np.int64)  # first step it is not feasible: it ends there
    done: list[NDArray[np.int64]] = []
    if len(np.unique(shell[sats])) >= 2:
        for t in range(n_t):
            if len(act_a):
                end = act_t1 <= t
                if end.any():
                    done.append(np.stack([act_a[end], act_b[end], act_t0[end], act_t1[end]], axis=1))
                    np.add.at(free, act_a[end], 1)
                    np.add.at(free, act_b[end], 1)
                    alive = ~end
                    act_a, act_b, act_t0, act_t1 = act_a[alive], act_b[alive], act_t0[alive], act_t1[alive]
            # Rounds until nothing more pairs up: the partner search looks among satellites with a free
            # terminal, so once a round has taken the nearest ones, the next finds the partners left
            # (one round at step 0 left 254 of the 2026 set's terminals to pair up over the next three
            # steps, each paying an acquisition a warm start should not have).
            for _ in range(MAX_ROUNDS):
                cand = sats[(free[sats] > 0) & valid[sats, t]]
                if len(np.unique(shell[cand])) < 2:
                    break
                ca, cb, cd = _candidates(geo, cand, shell, t)
                if not len(ca):
                    break
                # one candidate per pair (both sides may have found it), shortest first, ties by index
                order = np.lexsort((cb, ca, cd))
                ca, cb, cd = ca[order], cb[order], cd[order]
                key = ca * n_sat + cb
                _, first = np.unique(key, return_index=True)
                first.sort()
                ca, cb = ca[first], cb[first]
                holds = geo.feasible(ca, cb, t, min(n_t, t + hold)).all(axis=1)
                ca, cb = ca[holds], cb[holds]
                # slowest relative motion first (0.1 km/s bins; within a bin the shortest stays first): a
                # link lasts about (range left) / (relative speed), so this takes fewer acquisitions
                # (2026 set, 10 min: 51 instead of 74 per terminal and day) for slightly longer links
                speed = _norm(v[cb, t] - v[ca, t])
                by_speed = np.argsort(np.round(speed, 1), kind="stable")
                ca, cb = ca[by_speed], cb[by_speed]
                new_a: list[int] = []
                new_b: list[int] = []
                # first, in the same order, links for the pairs of shells that have fewer than
                # MIN_LINKS_PER_SHELL_PAIR: nearest first alone gives every spare terminal of two
                # co-located shells to each other and leaves the others islands
                n_sh = int(shell.max()) + 1
                joined = np.zeros((n_sh, n_sh), np.int64)
                np.add.at(joined, (shell[act_a], shell[act_b]), 1)
                joined += joined.T
                sa, sb = shell[ca].tolist(), shell[cb].tolist()
                for quota in (True, False):
                    for a, b, x, y in zip(ca.tolist(), cb.tolist(), sa, sb):
                        if free[a] > 0 and free[b] > 0 and (not quota or joined[x, y] < MIN_LINKS_PER_SHELL_PAIR):
                            free[a] -= 1
                            free[b] -= 1
                            new_a.append(a)
                            new_b.append(b)
                            joined[x, y] += 1
                            joined[y, x] += 1
                if not new_a:
                    break
                na, nb = np.asarray(new_a, np.int64), np.asarray(new_b, np.int64)
                act_a = np.concatenate([act_a, na])
                act_b = np.concatenate([act_b, nb])
                act_t0 = np.concatenate([act_t0, np.full(len(new_a), t, np.int64)])
                # feasible for the hold window already checked; held until the first step it is not
                act_t1 = np.concatenate([act_t1, geo.end_of(na, nb, min(n_t, t + hold))])
    if len(act_a):
        done.append(np.stack([act_a, act_b, act_t0, act_t1], axis=1))
    links = np.concatenate(done).astype(np.int64) if done else np.empty((0, 4), np.int64)
    links = links[np.lexsort((links[:, 1], links[:, 0], links[:, 2]))] if len(links) else links
    return _slots(links, r, n_t, acq, int(spare.sum()), ephem.step_s)


def _slots(links: NDArray[np.int64], r: NDArray[np.float64], n_t: int, acq_steps: int, terminals: int,
           step_s: float) -> CrossShellLinks:
    """Put each link on a slot of its lower-indexed satellite (first slot free by its start)."""
    slot_of = np.empty(len(links), np.int64)
    slot_end: dict[int, list[int]] = {}  # owner -> end step of each of its slots
    slot_base: dict[int, list[int]] = {}
    owners: list[int] = []
    for k, (a, _b, t0, t1) in enumerate(links.tolist()):
        ends = slot_end.setdefault(a, [])
        ids = slot_base.setdefault(a, [])
        for j, e in enumerate(ends):
            if e <= t0:
                ends[j] = t1
                slot_of[k] = ids[j]
                break
        else:
            ends.append(t1)
            ids.append(len(owners))
            slot_of[k] = len(owners)
            owners.append(a)
    # slots ordered by owner (then by creation), so the link table reads satellite by satellite
    order = np.argsort(np.asarray(owners, np.int64), kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    n_slots = len(owners)
    owner = np.asarray(owners, np.int32)[order] if n_slots else np.empty(0, np.int32)
    peer = np.full((n_slots, n_t), -1, np.int32)
    state = np.full((n_slots, n_t), Reason.NO_PARTNER, np.uint8)
    delay = np.zeros((n_slots, n_t), np.float32)
    for k, (a, b, t0, t1) in enumerate(links.tolist()):
        s = int(rank[slot_of[k]])
        peer[s, t0:t1] = b
        state[s, t0:t1] = Reason.UP
        if t0 > 0 and acq_steps:
            state[s, t0:min(t1, t0 + acq_steps)] = Reason.ACQUIRING
        delay[s, t0:t1] = _norm(r[b, t0:t1] - r[a, t0:t1]) / C_KM_S * 1000.0
    stats = cross_shell_stats(links, n_t, step_s, terminals, int((state == Reason.ACQUIRING).sum()))
    log.debug("cross-shell: %d links on %d slots; %s", len(links), n_slots, stats)
    return CrossShellLinks(owner, peer, state, delay, links, stats)


def cross_shell_stats(links: NDArray[np.int64], n_t: int, step_s: float, terminals: int,
                      acquiring_link_steps: int) -> dict[str, Any]:
    """Figures for the plan: links per step, lifetimes, acquisitions per terminal per day, the share
    of terminal time spent acquiring.

    Parameters
    ----------
    links : ndarray, (n, 4) int
        a, b, first step, end step (exclusive) of every link.
    n_t : int
        Steps in the run.
    step_s : float
        Step, s.
    terminals : int
        Cross-shell terminals in the constellation (``IslTopology.spare`` summed).
    acquiring_link_steps : int
        Link-steps in state ACQUIRING.

    Returns
    -------
    dict
        ``terminals``; ``links`` (over the run); ``with_partner_mean`` (links per step on average,
        acquiring or up); ``lifetime_median_s`` (links cut by the run's start or end count with the
        part inside it, so it is a lower bound; None without links); ``completed_lifetime_median_s``
        (only links that start and end inside the run); ``acquisitions`` (links started after step
        0); ``acquisitions_per_terminal_day`` (each acquisition occupies the terminals at both ends:
        ``2 acquisitions / terminals / days``); ``acquiring_share`` (share of terminal time spent
        acquiring, both ends counted).
    """
    life = (links[:, 3] - links[:, 2]) * step_s if len(links) else np.empty(0)
    inside = (links[:, 2] > 0) & (links[:, 3] < n_t) if len(links) else np.empty(0, bool)
    starts = int((links[:, 2] > 0).sum()) if len(links) else 0
    days = n_t * step_s / 86400.0
    return {
        "terminals": terminals,
        "links": len(links),
        "with_partner_mean": round(float(life.sum() / step_s / n_t), 1) if n_t else 0.0,
        "lifetime_median_s": float(np.median(life)) if len(life) else None,
        "completed_lifetime_median_s": float(np.median(life[inside])) if inside.any() else None,
        "acquisitions": starts,
        "acquisitions_per_terminal_day": round(2 * starts / terminals / days, 1) if terminals and days else None,
        "acquiring_share": round(2 * acquiring_link_steps / (terminals * n_t), 4) if terminals and n_t else None,
    }


def links_of_slots(peer: NDArray[np.integer]) -> NDArray[np.int64]:
    """The links carried by slots whose partner changes, from their peers over time.

    Parameters
    ----------
    peer : ndarray, (n_slots, n_t) int
        Partner per step, -1 for none.

    Returns
    -------
    ndarray, (n_links, 4) int64
        Slot, partner, first step, end step (exclusive) of every run of one partner.
    """
    peer = np.asarray(peer)
    n, n_t = peer.shape
    if n == 0 or n_t == 0:
        return np.empty((0, 4), np.int64)
    padded = np.full((n, n_t + 2), -1, np.int64)
    padded[:, 1:-1] = peer
    rows, cols = np.nonzero(padded[:, 1:] != padded[:, :-1])  # a new run starts at step ``cols``
    same = rows[:-1] == rows[1:]
    r, t0, t1 = rows[:-1][same], cols[:-1][same], cols[1:][same]
    val = peer[r, np.minimum(t0, n_t - 1)]
    keep = (val >= 0) & (t0 < n_t)
    return np.stack([r[keep], val[keep], t0[keep], t1[keep]], axis=1).astype(np.int64)


def cross_shell_summary(timeline: Any) -> dict[str, Any]:
    """:func:`cross_shell_stats` of a timeline's cross-shell slots (role "cross-shell")."""
    from .timeline import LINK_CLASSES, LINK_ROLES

    slots = np.flatnonzero((timeline.link_class == LINK_CLASSES.index("isl"))
                           & (timeline.link_role == LINK_ROLES.index("cross-shell")))
    report = timeline.report or {}
    terminals = (report.get("cross_shell") or {}).get("terminals")
    if terminals is None:
        terminals = (report.get("isl_topology") or {}).get("spare_terminals", 0)
    out = cross_shell_stats(links_of_slots(timeline.peer[slots]), timeline.n_steps, timeline.step_s,
                            int(terminals or 0), int((timeline.state[slots] == Reason.ACQUIRING).sum()))
    out["slots"] = len(slots)
    out["up_mean"] = round(float((timeline.state[slots] == Reason.UP).sum(axis=0).mean()), 1) \
        if timeline.n_steps else 0.0
    return out


__all__ = ["CrossShellLinks", "cross_shell_links", "cross_shell_stats", "cross_shell_summary", "links_of_slots"]
