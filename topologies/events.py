"""Scheduled events (``[[events]]``): failures, restores, degradations and regional outages that are part
of the plan, written into a built timeline's state and parameter arrays.

A scheduled event is planned, not a surprise: it is in the timeline, so ``run`` applies it at its step
like any handover, ``plan`` shows its effect on the predicted paths, and a protocol that reads the
timeline's future (``predictive``) sees it coming. A link slot an event takes down has state
:attr:`Reason.SCHEDULED <topologies.timeline.Reason.SCHEDULED>`; a slot already down for another reason
keeps that reason. (An unplanned failure injected by a script is :attr:`Reason.FAILED
<topologies.timeline.Reason.FAILED>` and never in a timeline.)

Kinds and their keys:

=================  ==================================================================================
kind               what
=================  ==================================================================================
``fail``           ``target`` down from ``at_s``: for ``duration_s`` if given, else until a ``restore``
``restore``        ends an open ``fail`` of the same ``target`` at ``at_s``
``degrade``        ``target`` (or every link of ``link_class``) with ``rate_mbps`` and/or ``loss_pct``
                   in place of its own and ``extra_delay_ms`` added to its delay, for ``duration_s``
                   (else to the end)
``region-outage``  every ground-to-satellite slot (class ``gsl``) of every ground site (gateway, user
                   terminal) within ``radius_km`` great-circle distance of ``lat_deg``/``lon_deg`` down
                   for ``duration_s`` (else to the end)
=================  ==================================================================================

A target is a node name (every slot that touches the node: a satellite's laser links and the antennas
on it, a gateway's antennas and its hosts' access links, a terminal's beam, a host's or compute node's
access link) or a pair of node names (the slots joining them; a pair's slots are matched at each step,
so an antenna counts while it is on that satellite). ``antenna = k`` with a gateway or terminal as
``target`` narrows it to that one antenna slot (0-based, in the order of the link table).

Times: an event at ``at_s`` takes effect at the first step at or after it (``ceil(at_s / step_s)``),
as the random outages of :mod:`topologies.outages` do; one of ``duration_s`` ends at the first step at or
after ``at_s + duration_s``. ``every_s`` repeats the event from ``at_s`` (default 0) every ``every_s``
seconds, each time for ``duration_s`` (required, shorter than ``every_s``). Occurrences that start at or
after the timeline's end are listed with no steps (a run shortened by ``--duration`` keeps its events).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError
from .outages import steps_for
from .timeline import LINK_CLASSES, Reason, Timeline

if TYPE_CHECKING:
    from .scenario import Scenario

EVENT_KINDS = ("fail", "restore", "degrade", "region-outage")
#: nodes with ground-to-satellite slots, which a region-outage takes down
GROUND_SITE_KINDS = ("gateway", "terminal")

#: Mean Earth radius (IUGG R1), km: the sphere on which a region's great-circle radius is measured.
MEAN_EARTH_RADIUS_KM = 6371.0088

_NUMBERS = ("at_s", "every_s", "duration_s", "rate_mbps", "loss_pct", "extra_delay_ms", "lat_deg", "lon_deg",
            "radius_km")
_KEYS = ("kind", "target", "antenna", "link_class", *_NUMBERS)
#: keys that only some kinds take
_ONLY = {"rate_mbps": ("degrade",), "loss_pct": ("degrade",), "extra_delay_ms": ("degrade",),
         "link_class": ("degrade",), "lat_deg": ("region-outage",), "lon_deg": ("region-outage",),
         "radius_km": ("region-outage",), "antenna": ("fail", "restore", "degrade"),
         "target": ("fail", "restore", "degrade"), "duration_s": ("fail", "degrade", "region-outage"),
         "every_s": ("fail", "degrade", "region-outage")}


@dataclass(frozen=True)
class EventSpec:
    """One ``[[events]]`` entry, checked on its own (names are checked against the timeline later).

    Every check raises ValueError whose message starts with the key at fault (the loader turns it into
    a :class:`ConfigError` naming the event and the key).
    """

    kind: str
    target: str | tuple[str, str] | None = None
    antenna: int | None = None
    link_class: str | None = None
    at_s: float | None = None
    every_s: float | None = None
    duration_s: float | None = None
    rate_mbps: float | None = None
    loss_pct: float | None = None
    extra_delay_ms: float | None = None
    lat_deg: float | None = None
    lon_deg: float | None = None
    radius_km: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(EVENT_KINDS)}; got {self.kind!r}")
        for key, kinds in _ONLY.items():
            if getattr(self, key) is not None and self.kind not in kinds:
                raise ValueError(f"{key} does not apply to kind {self.kind!r} (only to {', '.join(kinds)})")
        for key, lo, hi, lo_open in (("at_s", 0.0, 7 * 86400.0, False), ("every_s", 0.0, 7 * 86400.0, True),
                                     ("duration_s", 0.0, 7 * 86400.0, True), ("rate_mbps", 0.0, 100_000.0, True),
                                     ("loss_pct", 0.0, 100.0, False), ("extra_delay_ms", 0.0, 10_000.0, False),
                                     ("lat_deg", -90.0, 90.0, False), ("lon_deg", -180.0, 360.0, False),
                                     ("radius_km", 0.0, math.pi * MEAN_EARTH_RADIUS_KM, True)):
            v = getattr(self, key)
            if v is not None and not (math.isfinite(v) and (lo < v if lo_open else lo <= v) and v <= hi):
                raise ValueError(f"{key} must be a number in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {v!r}")
        if self.at_s is None and self.every_s is None:
            raise ValueError("at_s is required (or every_s with duration_s)")
        if self.every_s is not None:
            if self.duration_s is None:
                raise ValueError("every_s needs duration_s (how long each occurrence lasts)")
            if self.duration_s >= self.every_s:
                raise ValueError(f"duration_s ({self.duration_s:g}) must be shorter than every_s "
                                 f"({self.every_s:g}), or the occurrences overlap")
        if self.kind in ("fail", "restore") and self.target is None:
            raise ValueError(f"target is required for kind {self.kind!r}: a node name or a pair of node names")
        if self.kind == "degrade":
            if (self.target is None) == (self.link_class is None):
                raise ValueError("target or link_class: give exactly one for kind 'degrade'")
            if self.link_class is not None and self.link_class not in LINK_CLASSES:
                raise ValueError(f"link_class must be one of {', '.join(LINK_CLASSES)}; got {self.link_class!r}")
            if self.rate_mbps is None and self.loss_pct is None and self.extra_delay_ms is None:
                raise ValueError("rate_mbps or loss_pct or extra_delay_ms: kind 'degrade' needs at least one")
        if self.kind == "region-outage":
            missing = [k for k in ("lat_deg", "lon_deg", "radius_km") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"{missing[0]} is required for kind 'region-outage' (lat_deg, lon_deg, radius_km)")
        if self.antenna is not None:
            if not isinstance(self.target, str):
                raise ValueError("antenna needs target to be one gateway or terminal name")
            if self.antenna < 0:
                raise ValueError(f"antenna must be an index >= 0, got {self.antenna}")
        if isinstance(self.target, tuple) and self.target[0] == self.target[1]:
            raise ValueError(f"target must name two different nodes for a link, got {self.target[0]!r} twice")

    def target_label(self) -> str:
        if self.kind == "region-outage":
            return f"ground links within {self.radius_km:g} km of ({self.lat_deg:g}, {self.lon_deg:g})"
        if self.link_class is not None:
            return f"every {self.link_class} link"
        t = self.target if isinstance(self.target, str) else "~".join(self.target or ())
        return t + (f" antenna {self.antenna}" if self.antenna is not None else "")

    def occurrences_s(self, end_s: float) -> list[tuple[float, float | None]]:
        """(start, duration or None) of each occurrence that starts before ``end_s`` (s); a single event
        is listed even if it starts later."""
        first = self.at_s or 0.0
        if self.every_s is None:
            return [(first, self.duration_s)]
        n = max(1, math.ceil((end_s - first) / self.every_s - 1e-9))
        return [(first + k * self.every_s, self.duration_s) for k in range(n)]


# ------------------------------------------------------------------------------------------ loading
def build_events(value: Any, ctx: Any, key: str) -> tuple[EventSpec, ...]:
    """The scenario loader's builder for ``[[events]]``: a list of tables to :class:`EventSpec`.

    ``ctx`` is the loader's error context (``ctx.error(message, key) -> ConfigError``).

    Raises
    ------
    ConfigError
        Naming the event (``events[i]``) and the key: unknown key, wrong type, value out of range, a key
        the kind does not take, a missing key.
    """
    if not isinstance(value, list):
        raise ctx.error(f"expected an array of tables ([[{key}]]), got {type(value).__name__}", key)
    out = []
    for i, table in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(table, dict):
            raise ctx.error(f"expected a table, got {type(table).__name__} {table!r}", f"{where}.kind")
        kwargs: dict[str, Any] = {}
        for k, v in table.items():
            if k not in _KEYS:
                raise ctx.error(f"unknown key '{k}' in event {i}; allowed keys: {', '.join(sorted(_KEYS))}",
                                f"{where}.{k}")
            kwargs[k] = _typed(k, v, ctx, f"{where}.{k}")
        if "kind" not in kwargs:
            raise ctx.error(f"event {i} has no kind; kinds: {', '.join(EVENT_KINDS)}", f"{where}.kind")
        try:
            out.append(EventSpec(**kwargs))
        except ValueError as e:
            msg = str(e)
            named = next((k for k in _KEYS if msg.startswith(k + " ")), "kind")
            # a missing key has no line of its own: point at the event's kind
            line = ctx.line_of(f"{where}.{named}") or ctx.line_of(f"{where}.kind")
            raise ConfigError(f"event {i}: {msg}", file=ctx.file, line=line, key=f"{where}.{named}") from None
    return tuple(out)


def _typed(k: str, v: Any, ctx: Any, key: str) -> Any:
    if k in _NUMBERS:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ctx.error(f"expected a number, got {type(v).__name__} {v!r}", key)
        return float(v)
    if k == "antenna":
        if isinstance(v, bool) or not isinstance(v, int):
            raise ctx.error(f"expected an integer antenna index, got {type(v).__name__} {v!r}", key)
        return v
    if k == "target":
        if isinstance(v, str) and v:
            return v
        if isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) and x for x in v):
            return (v[0], v[1])
        raise ctx.error(f"expected a node name or a pair of node names like [\"sat-3-4\", \"sat-3-5\"], got {v!r}",
                        key)
    if not isinstance(v, str):
        raise ctx.error(f"expected a string, got {type(v).__name__} {v!r}", key)
    return v


# ------------------------------------------------------------------------------------------ applying
def _error(sc: Scenario, message: str, key: str) -> ConfigError:
    from .scenario import _Ctx

    text = None
    try:
        if sc.source != "<built-in>" and Path(sc.source).is_file():
            text = Path(sc.source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):  # not a TOML file (the scenario stored in a timeline): no line
        text = None
    return _Ctx(sc.source, text).error(message, key)


def haversine_km(lat1_deg: Any, lon1_deg: Any, lat2_deg: Any, lon2_deg: Any) -> np.ndarray:
    """Great-circle distance on the mean Earth sphere, km (arrays broadcast)."""
    p1, p2 = np.radians(lat1_deg), np.radians(lat2_deg)
    dl = np.radians(np.asarray(lon2_deg, float) - np.asarray(lon1_deg, float))
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * MEAN_EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


class _Targets:
    """Resolves an event's target to link-slot masks over a window of steps."""

    def __init__(self, tl: Timeline, sc: Scenario) -> None:
        self.tl = tl
        self.sc = sc
        self.la = tl.link_a.astype(np.int64)
        self.gsl = tl.link_class == LINK_CLASSES.index("gsl")

    def key(self, ev: EventSpec, i: int) -> tuple[Any, ...]:
        """A hashable identity of the target (node indices), checked against the timeline."""
        if ev.kind == "region-outage":
            return ("region", i)
        if ev.link_class is not None:
            return ("class", LINK_CLASSES.index(ev.link_class))
        assert ev.target is not None
        try:
            return target_key(self.tl, ev.target, ev.antenna)
        except TargetError as e:
            raise _error(self.sc, f"event {i}: {e}", f"events[{i}].{e.key}") from None

    def mask(self, key: tuple[Any, ...], ev: EventSpec, k0: int, k1: int) -> np.ndarray:
        """(n_links, k1 - k0) bool: the slots ``key`` covers at steps k0 .. k1 - 1."""
        tl = self.tl
        if key[0] in ("node", "link", "slot"):
            return target_slots(tl, key, tl.peer[:, k0:k1])
        if key[0] == "class":
            rows = tl.link_class == key[1]
        else:  # region: gsl slots of ground sites (gateways, terminals) within the radius
            rows = self.gsl & np.isin(self.la, region_sites(tl, ev.lat_deg, ev.lon_deg, ev.radius_km))
        return np.broadcast_to(rows[:, None], (tl.n_links, k1 - k0))


class TargetError(ValueError):
    """A target that does not resolve on a timeline; ``key`` is the key at fault (target or antenna)."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


def target_key(tl: Timeline, target: str | tuple[str, str], antenna: int | None = None) -> tuple[Any, ...]:
    """Resolve a target as ``[[events]]`` and the scripting API's ``fail()``/``restore()`` name it.

    Parameters
    ----------
    target : str or (str, str)
        A node name (every slot touching the node) or two node names (the slots joining them).
    antenna : int, optional
        With a gateway or terminal as ``target``: only its ``antenna``-th ground-to-satellite slot
        (0-based, in link-table order).

    Returns
    -------
    tuple
        ``("node", i)``, ``("link", i, j)`` with ``i < j``, or ``("slot", l)``: node indices and a
        link slot, for :func:`target_slots`.

    Raises
    ------
    TargetError
        An unknown node, a pair no slot joins at any step, an antenna the node does not have.
    """
    la = tl.link_a.astype(np.int64)

    def index(name: str) -> int:
        try:
            return tl.node_index(name)
        except ConfigError:
            raise TargetError(f"unknown node {name!r} (satellites are named like "
                              f"{tl.nodes[0].name if tl.nodes else '-'}; gateways, terminals, hosts and "
                              f"compute nodes as in the scenario)", "target") from None

    if isinstance(target, str):
        n = index(target)
        if antenna is None:
            return ("node", n)
        kind = tl.nodes[n].kind
        if kind not in ("gateway", "terminal"):
            raise TargetError(f"antenna needs a gateway or terminal as target, and {target!r} is a {kind}",
                              "antenna")
        rows = np.flatnonzero((la == n) & (tl.link_class == LINK_CLASSES.index("gsl")))
        if not 0 <= antenna < len(rows):
            raise TargetError(f"{target!r} has {len(rows)} antenna(s), numbered from 0; got antenna {antenna}",
                              "antenna")
        return ("slot", int(rows[antenna]))
    if antenna is not None:
        raise TargetError("antenna needs target to be one gateway or terminal name", "antenna")
    if target[0] == target[1]:
        raise TargetError(f"a link joins two different nodes, got {target[0]!r} twice", "target")
    a, b = sorted((index(target[0]), index(target[1])))
    rows = np.flatnonzero((la == a) | (la == b))
    far = np.where(la[rows] == a, b, a)
    if not (tl.peer[rows] == far[:, None]).any():
        raise TargetError(f"no link slot joins {target[0]!r} and {target[1]!r} at any step (+Grid neighbours are "
                          f"the next slot in the plane and the same slot in the next plane)", "target")
    return ("link", a, b)


def target_slots(tl: Timeline, key: tuple[Any, ...], peer: np.ndarray) -> np.ndarray:
    """The slots a :func:`target_key` covers, given the slots' peers (``(n_links,)`` for one step or
    ``(n_links, w)`` for w steps): a bool array of ``peer``'s shape. A pair's slots are matched on the
    peers given, so a gateway antenna counts while it is on that satellite."""
    la = tl.link_a.astype(np.int64)
    if peer.ndim == 2:
        la = la[:, None]
    if key[0] == "node":
        return (la == key[1]) | (peer == key[1])
    if key[0] == "link":
        _, a, b = key
        return ((la == a) & (peer == b)) | ((la == b) & (peer == a))
    if key[0] == "slot":
        rows = np.zeros(tl.n_links, bool)
        rows[key[1]] = True
        return np.broadcast_to(rows.reshape((-1,) + (1,) * (peer.ndim - 1)), peer.shape)
    raise ValueError(f"not a node, link or slot target: {key!r}")


def region_sites(tl: Timeline, lat_deg: Any, lon_deg: Any, radius_km: Any) -> np.ndarray:
    """Node indices of the ground sites (nodes with a position: gateways, user terminals) within
    ``radius_km`` great-circle distance of (``lat_deg``, ``lon_deg``)."""
    sites = [i for i, n in enumerate(tl.nodes) if n.kind in GROUND_SITE_KINDS]
    if not sites:
        return np.empty(0, np.int64)
    lat = np.array([tl.nodes[i].info["lat_deg"] for i in sites], float)
    lon = np.array([tl.nodes[i].info["lon_deg"] for i in sites], float)
    return np.asarray(sites, np.int64)[haversine_km(lat_deg, lon_deg, lat, lon) <= radius_km]


def apply_events(tl: Timeline, sc: Scenario) -> list[dict[str, Any]]:
    """Write the scenario's events into ``tl`` (its ``state``, ``delay_ms``, ``rate_mbps`` and ``loss_pct``
    arrays, in place) and say what each did.

    Fails and restores are applied per target in time order (at one step, in the order given), then
    degradations, then regional outages. A slot taken down gets :attr:`Reason.SCHEDULED` where it was up;
    a degraded slot's ``rate_mbps`` and ``loss_pct`` are replaced and ``extra_delay_ms`` added to its delay.

    Returns
    -------
    list of dict
        Per event, in the scenario's order: ``index``, ``kind``, ``target`` (text), ``occurrences``: per
        occurrence ``at_s``, ``step`` and ``end_step`` (exclusive; None if it starts after the timeline's
        end) and ``links``: the slots it took down (or degraded) at any of its steps.

    Raises
    ------
    ConfigError
        An unknown node, a pair no link joins, an antenna a site does not have, or a restore of a target
        no earlier event has failed (naming ``events[i]`` and the key).
    """
    n_steps, step_s = tl.n_steps, tl.step_s
    end_s = n_steps * step_s
    targets = _Targets(tl, sc)
    effects: list[dict[str, Any]] = []
    windows: list[list[tuple[int, int]]] = []
    keys: list[tuple[Any, ...]] = []
    for i, ev in enumerate(sc.events):
        keys.append(targets.key(ev, i))
        occ, win = [], []
        for at, dur in ev.occurrences_s(end_s):
            k0 = steps_for(at, step_s)
            k1 = n_steps if dur is None else steps_for(at + dur, step_s)
            k1 = min(max(k1, k0 + 1) if dur is not None else k1, n_steps)
            inside = k0 < n_steps
            occ.append({"at_s": at, "duration_s": dur, "step": k0, "end_step": k1 if inside else None})
            if inside:
                win.append((k0, k1))
        windows.append(win)
        effects.append({"index": i, "kind": ev.kind, "target": ev.target_label(), "occurrences": occ, "links": 0})

    # fails and restores: one (n_steps,) failed-at flag per target, built in time order
    failed: dict[tuple[Any, ...], np.ndarray] = {}
    order = sorted((k0, i) for i, ev in enumerate(sc.events) if ev.kind in ("fail", "restore")
                   for k0, _ in windows[i])
    first_event: dict[tuple[Any, ...], EventSpec] = {}
    for k0, i in order:
        ev, key = sc.events[i], keys[i]
        flag = failed.setdefault(key, np.zeros(n_steps, bool))
        first_event.setdefault(key, ev)
        if ev.kind == "fail":
            k1 = next(b for a, b in windows[i] if a == k0)
            flag[k0:k1] = True
        else:
            if not (flag[k0] or (k0 > 0 and flag[k0 - 1])):
                raise _error(sc, f"event {i}: restores {ev.target_label()} at {ev.at_s:g} s, when no earlier "
                                 f"event has failed it", f"events[{i}].target")
            flag[k0:] = False
    down = np.zeros(tl.state.shape, bool)
    for key, flag in failed.items():
        steps = np.flatnonzero(flag)
        if len(steps):
            k0, k1 = int(steps[0]), int(steps[-1]) + 1
            m = targets.mask(key, first_event[key], k0, k1) & flag[None, k0:k1]
            down[:, k0:k1] |= m
    # per fail event: the slots it took down (while its own window was in force)
    for i, ev in enumerate(sc.events):
        if ev.kind != "fail":
            continue
        hit = np.zeros(tl.n_links, bool)
        flag = failed.get(keys[i], np.zeros(n_steps, bool))
        for k0, k1 in windows[i]:
            m = targets.mask(keys[i], ev, k0, k1) & flag[None, k0:k1] & (tl.state[:, k0:k1] == Reason.UP)
            hit |= m.any(axis=1)
        effects[i]["links"] = int(hit.sum())

    for i, ev in enumerate(sc.events):
        if ev.kind == "degrade":
            hit = np.zeros(tl.n_links, bool)
            for k0, k1 in windows[i]:
                m = targets.mask(keys[i], ev, k0, k1)
                hit |= m.any(axis=1)
                if ev.rate_mbps is not None:
                    tl.rate_mbps[:, k0:k1][m] = ev.rate_mbps
                if ev.loss_pct is not None:
                    tl.loss_pct[:, k0:k1][m] = ev.loss_pct
                if ev.extra_delay_ms is not None:
                    tl.delay_ms[:, k0:k1][m] += np.float32(ev.extra_delay_ms)
            effects[i]["links"] = int(hit.sum())
        elif ev.kind == "region-outage":
            hit = np.zeros(tl.n_links, bool)
            for k0, k1 in windows[i]:
                m = targets.mask(keys[i], ev, k0, k1)
                hit |= (m & (tl.state[:, k0:k1] == Reason.UP)).any(axis=1)
                down[:, k0:k1] |= m
            effects[i]["links"] = int(hit.sum())
            effects[i]["sites"] = [tl.nodes[int(s)].name for s in region_sites(tl, ev.lat_deg, ev.lon_deg,
                                                                                ev.radius_km)]
    tl.state[down & (tl.state == Reason.UP)] = Reason.SCHEDULED
    return effects
