"""The scripting API: a scenario as a live emulation (or as a plan only), driven from Python.

What Mininet users script, for a constellation: open the network, run commands in its nodes, move the
clock, fail and restore links and nodes, and ask which path and RTT the network should show now::

    from emulator.api import open_emulation

    with open_emulation("examples/scripted.toml", duration_s=30) as emu:   # builds it (root)
        print(emu.node("h-london").cmd("ping -c 3", emu.address_of("h-new-york")))
        route = emu.path("h-london", "h-new-york")     # predicted path and RTT at the current step
        emu.fail(route.isl_hops[0])                    # an ISL on it, now: routes go around it
        print(emu.path("h-london", "h-new-york").rtt_ms)
        emu.run(seconds=10)                            # the clock in real time, as `satnetem run` plays it
    # torn down here, also after an exception, Ctrl-C or SIGTERM

:func:`plan_only` gives the same object without root or Mininet: nodes, addresses, the clock (moved by
hand), failures and the predicted paths, computed on the timeline alone.

Failures are an override layer on the snapshots the emulation applies (:class:`Failures`): a link that
is up in the timeline but failed by the script is down with reason :attr:`Reason.FAILED
<topologies.timeline.Reason.FAILED>`, the routes of the next applied step are computed around it, and
the predictions here read the same applied state. The timeline itself is not changed, so a protocol
that reads its future (``predictive``) cannot see an unplanned failure coming.
"""

from __future__ import annotations

import atexit
import bisect
import dataclasses
import logging
import math
import os
import signal
import threading
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Self

import numpy as np

from routing.base import RouteTable, RoutingProtocol, scenario_protocol
from routing.daemon import is_daemon_driven
from routing.graph import build_graph, path, path_delay_ms
from routing.paths import table_path
from topologies.errors import ConfigError, SatnetemError
from topologies.events import TargetError, target_key, target_slots
from topologies.scenario import Scenario, TimeConfig, default_scenario, load_scenario
from topologies.timeline import LINK_CLASSES, Reason, Snapshot, Timeline

log = logging.getLogger(__name__)

__all__ = ["Experiment", "Failures", "LinkInfo", "LiveEmulation", "NetState", "PathInfo", "PlanOnly",
           "open_emulation", "plan_only"]

#: A failure target, as :func:`topologies.events.target_key` resolves it (the same as ``[[events]]``):
#: ``("node", i)``, ``("link", i, j)`` with node indices ``i < j``, or ``("slot", l)`` (one antenna).
Target = tuple[Any, ...]


# ------------------------------------------------------------------------------------------ values
@dataclass(frozen=True)
class PathInfo:
    """The predicted path between two nodes at one step.

    ``nodes``/``links`` follow the routes in force from ``src`` to ``dst`` (``reverse_nodes`` back);
    both are empty when that direction has no route. Delays are one-way sums of the links' delays in
    ms, NaN where unreachable.
    """

    step: int
    src: str
    dst: str
    nodes: tuple[str, ...]
    links: tuple[int, ...]
    reverse_nodes: tuple[str, ...]
    forward_ms: float
    reverse_ms: float
    #: the links of the forward path that are ISLs, as ``(near, far)`` node names (a ``fail`` target)
    isl_hops: tuple[tuple[str, str], ...] = ()

    @property
    def rtt_ms(self) -> float:
        """Round-trip time, ms: forward plus reverse one-way delay (NaN if either is unreachable)."""
        return self.forward_ms + self.reverse_ms

    @property
    def reachable(self) -> bool:
        return math.isfinite(self.rtt_ms)

    def __str__(self) -> str:
        if not self.reachable:
            return f"{self.src} -> {self.dst}: unreachable at step {self.step}"
        return f"{' > '.join(self.nodes)}: RTT {self.rtt_ms:.2f} ms (step {self.step})"


@dataclass(frozen=True)
class LinkInfo:
    """One link slot at the current step. ``reason`` is ``"up"`` or why it is down (``"failed"`` when a
    script failed it); delay one-way in ms, rate in Mbit/s and loss in percent, each direction."""

    slot: int
    kind: str
    ends: tuple[str, str]
    up: bool
    reason: str
    delay_ms: float
    rate_mbps: float
    loss_pct: float


@dataclass(frozen=True)
class NetState:
    """Counts of the current step: link slots up and down (by class and by reason) and the failures in
    force (their targets as text: ``"sat-0-1"``, ``"sat-0-0~sat-0-1"``)."""

    step: int
    time_s: float
    links_up: int
    links_down: int
    isl_up: int
    isl_down: int
    gsl_up: int
    gsl_down: int
    down_by_reason: dict[str, int]
    failures: tuple[str, ...]


# ------------------------------------------------------------------------------------------ failures
class Failures:
    """Failures and restores by step: an override layer on a timeline's snapshots.

    A target is a node (every link slot that touches it: a satellite's ISLs, the gateway antennas on
    it, a compute node's access link; a gateway's antennas and its hosts' access links), the link(s)
    between two nodes, or one antenna of a gateway or terminal: named and resolved exactly as a
    scheduled event's target (:func:`topologies.events.target_key`, :func:`~topologies.events.target_slots`).
    The difference is only when it is known: a scheduled event is written into the timeline
    (:attr:`Reason.SCHEDULED`), where ``predictive`` sees it coming; a failure here overrides the
    applied snapshots only (:attr:`Reason.FAILED`). A target is failed from the step of its
    :meth:`add` with ``failed=True`` until one with ``failed=False``; at one step, the later call
    wins. Pure (no kernel).
    """

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self._link_a = timeline.link_a.astype(np.int64)
        self._events: dict[Target, list[tuple[int, int, bool]]] = {}  # target -> [(step, seq, failed)]
        self._seq = 0
        self.version = 0  # bumped on every change (plan-only caches by it)

    def target(self, what: Any, antenna: int | None = None) -> Target:
        """Resolve a node name or a pair of node names (with ``antenna``: one antenna of a gateway or
        terminal) to a target.

        Raises
        ------
        ConfigError
            Unknown name, a pair that is not two distinct names, two nodes no link slot ever joins, an
            antenna the node does not have.
        """
        if antenna is not None and (not isinstance(antenna, Integral) or isinstance(antenna, bool)):
            raise ConfigError(f"antenna must be an integer index, got {antenna!r}", key="antenna")
        if isinstance(what, (tuple, list)) and len(what) == 2 and all(isinstance(w, str) for w in what):
            what = (what[0], what[1])
        elif not isinstance(what, str):
            raise ConfigError(f"a failure target is a node name or a pair of node names, got {what!r}",
                              key="target")
        try:
            return target_key(self.timeline, what, None if antenna is None else int(antenna))
        except TargetError as e:
            raise ConfigError(str(e), key=e.key) from None

    def copy(self) -> Failures:
        """An independent copy (same timeline, same failures and restores)."""
        out = Failures(self.timeline)
        out._events = {t: list(ev) for t, ev in self._events.items()}
        out._seq = self._seq
        return out

    def label(self, t: Target) -> str:
        names = self.timeline.nodes
        if t[0] == "slot":
            a = int(self.timeline.link_a[t[1]])
            k = int(((self._link_a[:t[1]] == a) & (self.timeline.link_class[:t[1]] == LINK_CLASSES.index("gsl"))).sum())
            return f"{names[a].name} antenna {k}"
        return names[t[1]].name if t[0] == "node" else f"{names[t[1]].name}~{names[t[2]].name}"

    def add(self, t: Target, step: int, failed: bool) -> None:
        """Fail (``failed=True``) or restore ``t`` from ``step`` on."""
        self._seq += 1
        bisect.insort(self._events.setdefault(t, []), (int(step), self._seq, bool(failed)))
        self.version += 1

    def failed(self, t: Target, step: int) -> bool:
        """True if ``t`` is failed at ``step``."""
        ev = self._events.get(t, [])
        k = bisect.bisect_right(ev, (int(step), math.inf, True))
        return k > 0 and ev[k - 1][2]

    def active(self, step: int) -> list[Target]:
        """The targets failed at ``step``."""
        return [t for t in self._events if self.failed(t, step)]

    def mask(self, t: Target, peer: np.ndarray) -> np.ndarray:
        """(n_links,) bool: the slots ``t`` covers when the slots' peers are ``peer``."""
        return target_slots(self.timeline, t, peer)

    def apply(self, snap: Snapshot) -> Snapshot:
        """``snap`` with every up slot of a target failed at its step set down (:attr:`Reason.FAILED`);
        slots already down keep their reason. ``snap`` itself is unchanged."""
        active = self.active(snap.step)
        if not active:
            return snap
        hit = np.zeros(len(snap.state), bool)
        for t in active:
            hit |= self.mask(t, snap.peer)
        hit &= snap.state == Reason.UP
        state = snap.state.copy()
        state[hit] = Reason.FAILED
        return Snapshot(snap.step, state, snap.peer, snap.params)


# ------------------------------------------------------------------------------------------ the model
class Experiment:
    """What the live emulation and the plan-only model share: names, addresses, the clock, failures,
    the current state and the predicted paths. Made by :func:`open_emulation` or :func:`plan_only`."""

    def __init__(self, scenario: Scenario, timeline: Timeline, protocol: RoutingProtocol) -> None:
        self.scenario = scenario
        self.timeline = timeline
        self.protocol = protocol
        self.failures = Failures(timeline)
        self._step = 0
        self._lock = threading.RLock()  # the clock (maybe in another thread) against fail()/restore()
        self._addr: Any = None
        self._closed = False

    # --- names ----------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Every node's name, in node-table order (satellites, gateways, hosts, compute nodes)."""
        return [n.name for n in self.timeline.nodes]

    def names_of(self, kind: str) -> list[str]:
        """Names of the nodes of ``kind`` ("sat", "gateway", "terminal", "host", "compute")."""
        return [self.timeline.nodes[i].name for i in self.timeline.nodes_of(kind)]

    def kind_of(self, name: str) -> str:
        return self.timeline.nodes[self.timeline.node_index(name)].kind

    def address_of(self, name: str) -> str:
        """The IPv4 address node ``name`` answers at (a router's loopback, a host's own address)."""
        if self._addr is None:
            from .addressing import AddressPlan

            self._addr = AddressPlan().assign(self.timeline)
        return str(self._addr.address_of(self.timeline.node_index(name)))

    def node(self, name: str) -> Any:
        """The Mininet node called ``name`` (``cmd``, ``popen``): live emulations only."""
        raise SatnetemError(f"node {name!r}: a plan-only model has no live nodes (open_emulation() builds them)")

    # --- the clock ------------------------------------------------------------------------
    @property
    def current_step(self) -> int:
        """The step the network is at."""
        return self._step

    @property
    def time_s(self) -> float:
        """Seconds from the timeline's start at the current step."""
        return self._step * self.timeline.step_s

    @property
    def last_step(self) -> int:
        return self.timeline.n_steps - 1

    def step(self) -> None:
        """Move to the next step (applied at once, not waiting for its time)."""
        if self._step >= self.last_step:
            raise SatnetemError(f"the timeline ends at step {self.last_step}")
        self.goto(self._step + 1)

    def goto(self, step: int) -> None:
        """Move to ``step`` (any step, forwards or back), applied at once."""
        k = self._as_step(step, "step")
        with self._lock:
            self._check_open()
            self._move(k)
            self._step = k

    def run(self, steps: int | None = None, seconds: float | None = None, speed: float | None = None) -> Any:
        """Play the next ``steps`` steps, or ``seconds`` of timeline time (default: to the end).

        A live emulation plays them in real time (scaled by ``speed``, default the scenario's) with the
        runner's clock; the plan-only model moves at once. Returns the clock's records (live) or None.
        """
        if steps is not None and seconds is not None:
            raise ConfigError("run() takes steps or seconds, not both", key="run")
        if seconds is not None:
            _check_number("seconds", seconds, 0, math.inf)
            steps = int(round(seconds / self.timeline.step_s))
        elif steps is not None:
            if not isinstance(steps, Integral) or isinstance(steps, bool) or steps < 0:
                raise ConfigError(f"steps must be an integer >= 0, got {steps!r}", key="steps")
        last = self.last_step if steps is None else min(self.last_step, self._step + int(steps))
        return self._play(last, speed)

    # --- failures -------------------------------------------------------------------------
    def fail(self, target: str | tuple[str, str], at: int | float | None = None,
             antenna: int | None = None) -> None:
        """Fail a node (``"sat-3-4"``: all its links), the link between two nodes
        (``("sat-0-0", "sat-0-1")``) or one antenna of a gateway (``"gs-london", antenna=1``): named as
        an ``[[events]]`` target, but unplanned, so no protocol sees it before it happens.

        Parameters
        ----------
        target : str or (str, str)
        antenna : int, optional
            With a gateway or terminal as ``target``: only that antenna (0-based, link-table order).
        at : int or float, optional
            From which step (an ``int``) or time in seconds from the start (a ``float``: the first step
            at or after it). Default: now, applied at once; a later step is applied when the clock
            gets there.

        Raises
        ------
        ConfigError
            Unknown node, no link between the two nodes, no such antenna, or ``at`` in the past or after
            the end.
        """
        self._schedule(target, at, failed=True, antenna=antenna)

    def restore(self, target: str | tuple[str, str], at: int | float | None = None,
                antenna: int | None = None) -> None:
        """Undo :meth:`fail` of the same target from ``at`` on (as in :meth:`fail`). A restored link comes
        up at once (no acquisition time); a link that the timeline has down stays down.

        Raises
        ------
        ConfigError
            As :meth:`fail`, or the target is not failed at that step.
        """
        self._schedule(target, at, failed=False, antenna=antenna)

    def _schedule(self, what: Any, at: Any, failed: bool, antenna: int | None = None) -> None:
        t = self.failures.target(what, antenna)
        with self._lock:
            self._check_open()
            now = self._step
            k = now if at is None else self._at_step(at)
            if k < now:
                raise ConfigError(f"at={at!r} is step {k}, before the current step {now}", key="at")
            if not failed and not self.failures.failed(t, k):
                raise ConfigError(f"{self.failures.label(t)} is not failed at step {k}: nothing to restore",
                                  key="target")
            self.failures.add(t, k, failed)
            log.info("%s %s at step %d", "fail" if failed else "restore", self.failures.label(t), k)
            if k == now:
                self._move(now)  # applied at once: the current step again, through the new overrides

    def _at_step(self, at: Any) -> int:
        if isinstance(at, Integral) and not isinstance(at, bool):
            return self._as_step(int(at), "at")
        if isinstance(at, Real) and not isinstance(at, bool):
            _check_number("at", float(at), 0, self.timeline.duration_s, hi_open=True)
            return self._as_step(int(math.ceil(float(at) / self.timeline.step_s - 1e-9)), "at")
        raise ConfigError(f"at must be a step (int) or seconds from the start (float), got {at!r}", key="at")

    def _as_step(self, k: Any, key: str) -> int:
        if not isinstance(k, Integral) or isinstance(k, bool) or not 0 <= int(k) <= self.last_step:
            raise ConfigError(f"{key} must be a step in [0, {self.last_step}], got {k!r}", key=key)
        return int(k)

    # --- what the network has and should show ---------------------------------------------
    def snapshot(self) -> Snapshot:
        """The state at the current step: what the live network has applied (failures included)."""
        raise NotImplementedError

    def routes(self) -> RouteTable | None:
        """The route table in force (None for a daemon-driven protocol: its daemons choose)."""
        raise NotImplementedError

    def state(self) -> NetState:
        """Counts of the current step's link slots, and the failures in force."""
        snap = self.snapshot()
        cls = self.timeline.link_class
        up = snap.state == Reason.UP
        isl, gsl = cls == LINK_CLASSES.index("isl"), cls == LINK_CLASSES.index("gsl")
        codes, counts = np.unique(snap.state[~up], return_counts=True)
        return NetState(step=snap.step, time_s=snap.step * self.timeline.step_s,
                        links_up=int(up.sum()), links_down=int((~up).sum()),
                        isl_up=int((up & isl).sum()), isl_down=int((~up & isl).sum()),
                        gsl_up=int((up & gsl).sum()), gsl_down=int((~up & gsl).sum()),
                        down_by_reason={Reason(int(c)).label: int(n) for c, n in zip(codes, counts)},
                        failures=tuple(self.failures.label(t) for t in self.failures.active(snap.step)))

    def links(self, a: str, b: str) -> list[LinkInfo]:
        """The link slots between nodes ``a`` and ``b`` at the current step (several for a gateway with
        two antennas on one satellite; none while no slot joins them)."""
        snap = self.snapshot()
        i, j = self.timeline.node_index(a), self.timeline.node_index(b)
        slots = np.flatnonzero(self.failures.mask(("link", i, j), snap.peer))
        return [self._link_info(int(l), snap) for l in slots]

    def link(self, a: str, b: str) -> LinkInfo:
        """The link between ``a`` and ``b`` at the current step (the first, if several).

        Raises
        ------
        ConfigError
            No link slot joins them at this step.
        """
        found = self.links(a, b)
        if not found:
            raise ConfigError(f"no link slot joins {a!r} and {b!r} at step {self._step}", key="link")
        return found[0]

    def _link_info(self, l: int, snap: Snapshot) -> LinkInfo:
        tl = self.timeline
        p = int(snap.peer[l])
        delay_ms, rate_mbps, loss_pct = (float(x) for x in snap.params[l])
        return LinkInfo(slot=l, kind=LINK_CLASSES[int(tl.link_class[l])],
                        ends=(tl.nodes[int(tl.link_a[l])].name, tl.nodes[p].name if p >= 0 else "-"),
                        up=bool(snap.state[l] == Reason.UP), reason=Reason(int(snap.state[l])).label,
                        delay_ms=delay_ms, rate_mbps=rate_mbps, loss_pct=loss_pct)

    def path(self, src: str, dst: str) -> PathInfo:
        """The path packets from ``src`` to ``dst`` should take now, and its delays.

        Follows the route table in force (a daemon-driven protocol: the shortest-delay path) on the
        current step's applied state, failures included. The RTT is the sum of the link delays both
        ways: what ping should measure, less the time the hosts take to answer.
        """
        tl = self.timeline
        a, b = tl.node_index(src), tl.node_index(dst)
        snap = self.snapshot()
        table = self.routes()
        graph = build_graph(tl.link_a, snap, len(tl.nodes)) if table is None else None

        def one_way(s: int, d: int) -> tuple[list[int], list[int]]:
            if graph is not None:
                nodes, links, _ = path(graph, s, d)
                return nodes, links
            try:
                return table_path(table, s, d) if table is not None else ([], [])
            except ValueError:  # a loop: nothing arrives
                return [], []

        fwd, fwd_links = one_way(a, b)
        rev, rev_links = one_way(b, a)
        isl = LINK_CLASSES.index("isl")
        return PathInfo(
            step=snap.step, src=src, dst=dst, nodes=tuple(tl.nodes[v].name for v in fwd), links=tuple(fwd_links),
            reverse_nodes=tuple(tl.nodes[v].name for v in rev),
            forward_ms=path_delay_ms(snap, fwd_links) if fwd else math.nan,
            reverse_ms=path_delay_ms(snap, rev_links) if rev else math.nan,
            isl_hops=tuple((tl.nodes[u].name, tl.nodes[v].name)
                           for u, v, l in zip(fwd, fwd[1:], fwd_links) if tl.link_class[l] == isl))

    def rtt_ms(self, src: str, dst: str) -> float:
        """Predicted RTT between two nodes now, ms (NaN if unreachable): ``path(src, dst).rtt_ms``."""
        return self.path(src, dst).rtt_ms

    def what_if(self) -> PlanOnly:
        """A plan-only copy of this model at its current step, with its failures so far: try failures,
        restores and steps on it and read their predicted effect without touching this one."""
        copy = PlanOnly(self.scenario, self.timeline, self.protocol)
        copy.failures = self.failures.copy()
        copy._step = self._step
        return copy

    # --- life -----------------------------------------------------------------------------
    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise SatnetemError("this emulation is closed")

    # subclass hooks
    def _move(self, step: int) -> None:
        raise NotImplementedError

    def _play(self, last: int, speed: float | None) -> Any:
        raise NotImplementedError


class PlanOnly(Experiment):
    """The object model on the timeline alone: no root, no Mininet, no kernel. The clock moves only by
    hand (:meth:`run` jumps); the routes are the protocol's table on the current step's snapshot with
    the failures applied, as a live emulation would install them."""

    def __init__(self, scenario: Scenario, timeline: Timeline, protocol: RoutingProtocol) -> None:
        super().__init__(scenario, timeline, protocol)
        self._cache: tuple[tuple[int, int], Snapshot, RouteTable | None] | None = None

    def _current(self) -> tuple[Snapshot, RouteTable | None]:
        key = (self._step, self.failures.version)
        if self._cache is None or self._cache[0] != key:
            snap = self.failures.apply(self.timeline.snapshot(self._step))
            table = None if is_daemon_driven(self.protocol) else self.protocol.compute(self.timeline, self._step, snap)
            self._cache = (key, snap, table)
        return self._cache[1], self._cache[2]

    def snapshot(self) -> Snapshot:
        return self._current()[0]

    def routes(self) -> RouteTable | None:
        return self._current()[1]

    def _move(self, step: int) -> None:
        self._cache = None

    def _play(self, last: int, speed: float | None) -> None:
        self.goto(last)


class LiveEmulation(Experiment):
    """A scenario built in network namespaces (see :func:`open_emulation`). Close it (or leave its
    ``with`` block) to tear it down; it is also torn down when the interpreter exits."""

    def __init__(self, scenario: Scenario, timeline: Timeline, protocol: RoutingProtocol, shaper: str | None,
                 run_id: str | None, speed: float | None) -> None:
        super().__init__(scenario, timeline, protocol)
        from .network import Emulation, tcp_nodes
        from .shaping import make_shaper

        if speed is not None:
            _check_number("speed", speed, 0.01, 100)
        self.speed = float(speed) if speed is not None else scenario.emulation.speed
        self.records: list[Any] = []  # the clock's StepRecords of every run()
        #: the line of the part that died (a delay-daemon shard, the namespace holder, a routing daemon, an
        #: interface deleted from outside): once set, every call that moves the network raises it
        self.fault: str | None = None
        self._checks: list[Any] = []
        self._link_watch: Any = None
        self._old_signals: dict[int, Any] = {}
        self.compute: Any = None  # the compute nodes' services once start_compute() ran
        self._whereami: Any = None
        sh, self.shaper_reason = make_shaper(shaper or scenario.emulation.shaper, scenario.seed,
                                             scenario.emulation.keep_cpus_awake,
                                             scenario.emulation.carry_lateness)
        try:
            self.emulation = Emulation(timeline, sh, protocol, delay_tolerance_ms=scenario.emulation.delay_tolerance_ms,
                                       run_id=run_id)
            self.emulation.tcp_nodes = tcp_nodes(scenario.traffic)
        except BaseException:
            sh.close()
            raise
        self.emulation.target_filter = self.failures.apply
        self.emulation.queue_packets = dict(scenario.emulation.queue_packets)
        self.emulation.route_switch = scenario.emulation.route_switch
        self.emulation.keep_cpus_awake = scenario.emulation.keep_cpus_awake
        atexit.register(self.close)
        self._signals_raise()
        try:
            log.info("building %d nodes and %d links (%s)", len(timeline.nodes), timeline.n_links, self.shaper_reason)
            self.emulation.build()
            from .watchdog import holder_alive, link_deletions, routing_daemons_alive, shards_alive

            link_check, self._link_watch = link_deletions(self.emulation, self.names)
            self._checks = [shards_alive(sh), holder_alive(getattr(self.emulation, "holder", None)), link_check,
                            routing_daemons_alive(protocol)]
        except BaseException:
            self.close()
            raise

    @property
    def net(self) -> Any:
        """The Mininet-like object (``net["h-london"]``, ``net.hosts``) that Mininet's CLI drives."""
        return self.emulation.net

    def node(self, name: str) -> Any:
        self._check_open()
        return self.emulation.node(name)

    def address_of(self, name: str) -> str:
        return self.emulation.address_of(name)

    def snapshot(self) -> Snapshot:
        return self.emulation.applied

    def routes(self) -> RouteTable | None:
        return None if self.emulation.daemon_driven else self.emulation.routes

    def cli(self) -> None:
        """Mininet's CLI on the constellation (node names work as addresses); the clock stands still. A part
        of the emulation found dead at a command ends the CLI (see :attr:`fault`)."""
        from .runner import _constellation_cli

        self._check_open()
        _constellation_cli(self.emulation.net, self.emulation, self._health)

    def _health(self) -> str | None:
        """The first part found dead now (kept in :attr:`fault`), or None."""
        if self.fault is None and self._checks:
            from .watchdog import Watchdog

            self.fault = Watchdog(self._checks, lambda line: None).check_now()
        return self.fault

    def _check_open(self) -> None:
        super()._check_open()
        if self._health():
            raise SatnetemError(f"emulation stopped: {self.fault}; close() it")

    def start_compute(self, work_ms: float = 5.0) -> Any:
        """Start every compute node's service with its capacity (:mod:`emulator.traffic.compute`); from
        then on each applied step updates the nodes' ``whereami.json`` and enforces their power states.

        Returns
        -------
        emulator.traffic.compute.ComputeServices
            Its ``pids``, ``memory()`` and ``set_cpu_share(node, share)`` (see :meth:`set_cpu_share`).
        """
        self._check_open()
        if self.compute is not None:
            return self.compute
        from .traffic.compute import ComputeServices, WhereamiWriter, node_services

        svc = ComputeServices(self.emulation.run_id, work_ms=work_ms)
        try:
            svc.start(node_services(self.emulation))
            self._whereami = WhereamiWriter(svc, self.timeline, self.scenario.power_config().throttle_share)
        except BaseException:
            svc.stop()
            raise
        self.compute = svc
        self._whereami.post(self._step)
        log.info("compute services on %d nodes (%s)", len(svc.pids), svc.describe())
        return svc

    def set_cpu_share(self, node: str, cpu_share: float) -> None:
        """Change compute node ``node``'s CPU share (cores) now, e.g. to throttle it (:meth:`start_compute`
        first). A later power state change of the node's battery model sets it again.

        Raises
        ------
        ConfigError
            The services are not started, ``node`` is not a compute node, or the share is out of range.
        """
        if self.compute is None:
            raise ConfigError("start_compute() first: the compute services are not running", key="node")
        self.compute.set_cpu_share(node, cpu_share)

    def _apply(self, step: int) -> Any:
        emu = self.emulation
        was_down = emu.is_access & (emu.applied.state != Reason.UP)
        stats = emu.apply_step(step)
        back = np.flatnonzero(was_down & (emu.applied.state == Reason.UP))
        if len(back):  # a failed host's or compute node's link is back: the kernel dropped its default route
            emu.reinstall_host_routes(back)
        if self._whereami is not None:
            self._whereami.post(step)
        return stats

    def _move(self, step: int) -> None:
        self._apply(step)
        self.emulation.settle(self.speed)  # handover gaps end before the script goes on
        if step < self.last_step:  # spare antenna pairs to their next satellites, as between clock steps
            self.emulation.prepare_ahead(step)

    def _apply_on_clock(self, step: int) -> Any:
        with self._lock:
            stats = self._apply(step)
            self._step = step
            return stats

    def _play(self, last: int, speed: float | None) -> list[Any]:
        from .clock import Playback

        self._check_open()
        if speed is not None:
            _check_number("speed", speed, 0.01, 100)
        pb = Playback(self.timeline.step_s, self._step, last, self._apply_on_clock,
                      float(speed) if speed is not None else self.speed, ahead=self.emulation.prepare_ahead,
                      settle=self.emulation.settle)
        from .watchdog import Watchdog

        # as the runner does: checked every 0.2 s while the clock plays; a dead part stops the clock and
        # run() raises its line (the script's own thread may be blocked in run() for hours)
        watchdog = Watchdog(self._checks, lambda line: pb.stop())
        watchdog.start()
        try:
            records = pb.run()
        except (SatnetemError, OSError) as e:  # a step failed: the dead part that made it fail, if any
            watchdog.stop()
            self.fault = watchdog.fault or watchdog.check_now()
            if self.fault is None:
                raise
            raise SatnetemError(f"emulation stopped: {self.fault}") from e
        finally:
            watchdog.stop()
            self.records += pb.records
        if watchdog.fault is not None:
            self.fault = watchdog.fault
            raise SatnetemError(f"emulation stopped: {self.fault}")
        return records

    def close(self) -> None:
        """Tear the network down (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._whereami is not None:
                self._whereami.close()
            if self.compute is not None:
                self.compute.stop()
            if self._link_watch is not None:  # before the teardown deletes every interface
                self._link_watch.close()
            self.emulation.stop()
            self.emulation.shaper.close()
        finally:
            atexit.unregister(self.close)
            for s, h in self._old_signals.items():
                signal.signal(s, h)
            self._old_signals = {}

    def _signals_raise(self) -> None:
        """SIGTERM and SIGHUP end the script as Ctrl-C does, through the teardown (main thread only:
        Python handles signals there)."""
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        for s in (signal.SIGTERM, signal.SIGHUP):
            self._old_signals[s] = signal.signal(s, handler)


# ------------------------------------------------------------------------------------------ opening
def _check_number(key: str, value: Any, lo: float, hi: float, hi_open: bool = False) -> None:
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if not ok or not lo <= float(value) <= hi or (hi_open and float(value) >= hi):
        raise ConfigError(f"{key} must be a number in [{lo:g}, {hi:g}{')' if hi_open else ']'}, got {value!r}",
                          key=key)


def _scenario(scenario: str | os.PathLike | Scenario | None, duration_s: float | None,
              step_s: float | None) -> Scenario:
    if scenario is None:
        sc = default_scenario()
    elif isinstance(scenario, Scenario):
        sc = scenario
    elif isinstance(scenario, (str, os.PathLike)):
        sc = load_scenario(Path(scenario))
    else:
        raise ConfigError(f"scenario must be a path or a Scenario, got {type(scenario).__name__}", key="scenario")
    if duration_s is None and step_s is None:
        return sc
    changes: dict[str, float] = {}
    for key, value in (("duration_s", duration_s), ("step_s", step_s)):
        if value is not None:
            _check_number(key, value, 0, math.inf)
            changes[key] = float(value)
    try:
        time_cfg = TimeConfig(start=sc.time.start, duration_s=changes.get("duration_s", sc.time.duration_s),
                              step_s=changes.get("step_s", sc.time.step_s))
    except ValueError as e:
        raise ConfigError(str(e), file=sc.source, key="time") from None
    raw = {**sc.raw, "time": {**sc.raw.get("time", {}), **changes}}
    return dataclasses.replace(sc, time=time_cfg, raw=raw)


def _prepare(scenario: Any, duration_s: float | None, step_s: float | None,
             protocol: str | RoutingProtocol | None) -> tuple[Scenario, Timeline, RoutingProtocol]:
    from topologies.plan import plan_scenario

    sc = _scenario(scenario, duration_s, step_s)
    # by name: with the scenario's [routing.<name>] options (ospf's cost pushes), as 'run' builds it
    proto = protocol if isinstance(protocol, RoutingProtocol) else scenario_protocol(sc, protocol or None)
    return sc, plan_scenario(sc), proto


def plan_only(scenario: str | os.PathLike | Scenario | None = None, *, duration_s: float | None = None,
              step_s: float | None = None, protocol: str | RoutingProtocol | None = None) -> PlanOnly:
    """Plan a scenario and give the scripting model on its timeline alone (no root, no Mininet).

    Parameters
    ----------
    scenario : path, Scenario or None
        A scenario file, a loaded :class:`~topologies.scenario.Scenario`, or None for the built-in one.
    duration_s, step_s : float, optional
        Override the scenario's ``[time]`` duration and step, s.
    protocol : str or RoutingProtocol, optional
        Routing protocol (default: the scenario's).

    Raises
    ------
    ConfigError
        A bad scenario, override or protocol name (the message names file, line and key).
    """
    return PlanOnly(*_prepare(scenario, duration_s, step_s, protocol))


def open_emulation(scenario: str | os.PathLike | Scenario | None = None, *, duration_s: float | None = None,
                   step_s: float | None = None, protocol: str | RoutingProtocol | None = None,
                   shaper: str | None = None, speed: float | None = None,
                   run_id: str | None = None) -> LiveEmulation:
    """Plan a scenario and build it as a live network (root): every node a namespace with Mininet's
    ``cmd``/``popen``, at step 0. Use it in a ``with`` block, or call ``close()``.

    Parameters
    ----------
    scenario, duration_s, step_s, protocol
        As :func:`plan_only`.
    shaper : {"auto", "netem", "userspace"}, optional
        Shaping backend (default: the scenario's).
    speed : float, optional
        Clock speed for :meth:`~Experiment.run` (default: the scenario's), in [0.01, 100].
    run_id : str, optional
        Marks this emulation's processes (``satnetem clean --run-id``); default ``<pid>-<random>``.

    Raises
    ------
    SatnetemError
        Not root; a bad scenario or option (:class:`ConfigError`); a kernel request failed
        (:class:`~topologies.errors.ApplyError`, after everything built so far is torn down).
    """
    if os.geteuid() != 0:
        raise SatnetemError("open_emulation() builds network namespaces and needs root; plan_only() does not")
    return LiveEmulation(*_prepare(scenario, duration_s, step_s, protocol), shaper=shaper, run_id=run_id, speed=speed)
