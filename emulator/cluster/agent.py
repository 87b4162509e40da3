"""One agent per host: a Ray actor that builds its host's part of a clustered emulation, and the driver
side that places the nodes and asks every agent to build.

The driver (:func:`start`, in a process connected to the Ray cluster with :func:`ray.init`) places the
timeline's nodes on the hosts (:func:`emulator.cluster.placement.place`), starts one :class:`HostAgent`
actor per host pinned by the host's resource (``satnetem-host-<h>``, :func:`emulator.cluster.raynode.resource`,
no CPU reserved), asks each for its underlay address (its source address towards the head), then hands every
agent the same timeline and placement: each builds, in its own host, an :class:`emulator.network.Emulation`
given a :class:`~emulator.cluster.part.HostPart` (its nodes' namespaces, veths with both ends on it, a VXLAN
end per link to another host, the shaping of what it sends, the routes of its routers at step 0). Every call
is a Ray actor method call; there is no protocol of our own.

Each host's part has its own run id, ``<run_id>-h<host>``: ``satnetem clean --run-id <run_id>-h<host>`` on
that host removes what it left. The fake hosts of :mod:`emulator.cluster.lab` share one machine, where one
run id for all would let one host's teardown end another's holder.

Before building, each agent measures the underlay's one-way delay to the other hosts and shapes what it sends
there with the link's delay less that (:class:`~emulator.cluster.part.HostPart`, ``underlay_ms``); while it
plays, it measures again every ``underlay_every_s`` and shapes every link to another host with the new figure
from the next step on (:meth:`HostAgent.remeasure_underlay`).

One clock (:meth:`Cluster.play`): the driver picks a start instant on CLOCK_REALTIME a little ahead
(:data:`START_LEAD_S`) once every agent has built, tells each agent once, and then only polls their progress;
each agent applies step k at start + k x step_s by its own clock, in the single-host run's loop
(:class:`emulator.clock.Playback`, with ``prepare_ahead`` between steps), and records how late each apply
began. The hosts' clocks were checked at start (:func:`check_clocks`). :meth:`Cluster.apply_step` applies a
step when asked instead. ``satnetem run --cluster`` drives this module from :mod:`emulator.cluster.run`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from topologies.errors import ApplyError, ConfigError, SatnetemError
from topologies.timeline import Timeline

from .placement import Placement, place

log = logging.getLogger(__name__)

#: Longest wait for an agent's build, s.
BUILD_TIMEOUT_S = 600.0
#: Default bound on a host's clock offset from the driver's, ms: every host applies step k at start + k x
#: step_s by its own clock, so an offset is a step applied that much early or late on that host (NTP on a LAN
#: keeps well within 1 ms; 5 ms is a fraction of any step_s the emulator plays, >= 0.1 s).
MAX_CLOCK_OFFSET_MS = 5.0
#: Round trips per host for its clock offset (the shortest bounds it).
CLOCK_SAMPLES = 10
#: How far ahead of now the driver puts a run's start, s: long enough for one actor call to reach every
#: agent (one actor call each; an agent told late would apply the overdue steps at once, recorded late) and
#: for the receivers of flows starting at 0 s to start :data:`emulator.flows.RECEIVER_LEAD_S` ahead of their
#: senders on other hosts; short against a run.
START_LEAD_S = 2.0
#: An all-reduce whose ranks are on several hosts starts each round this long after its last rank finished the
#: round before (on one host: :data:`emulator.traffic.allreduce.START_MARGIN_S`): long enough for the barrier's
#: files to reach the other hosts (a poll of BARRIER_POLL_S, then one actor call). The poll runs while the host
#: plays: 50 a second, not more
BARRIER_MARGIN_S = 0.25
BARRIER_POLL_S = 0.02


def _put_file(folder: Path, name: str, text: str) -> None:
    """Write ``folder/name`` whole or not at all (a rank polling the folder never reads half of it)."""
    tmp = folder / f".{name}.relay"
    tmp.write_text(text)
    tmp.replace(folder / name)


def host_run_id(run_id: str, host: int) -> str:
    """The run id of ``host``'s part of run ``run_id``."""
    return f"{run_id}-h{host}"


class HostAgent:
    """What runs on one host (the body of its Ray actor): builds and stops the host's part.

    Parameters
    ----------
    host : int
        This host's number in the placement.
    """

    def __init__(self, host: int) -> None:
        self.host = host
        self.emu: Any = None
        self._playback: Any = None
        self._player: threading.Thread | None = None
        self._played: list[dict[str, Any]] = []
        self._play_error: str | None = None
        self._starter: Any = None  # the flows started on this host (emulator.flows.FlowStarter)
        self._flows_dir: str | None = None
        self._flow_timers: list[threading.Timer] = []
        self._flow_errors: list[str] = []
        self._underlay: tuple[str, ...] = ()  # every host's underlay address (build)
        self._one_way: list[float] | None = None  # the underlay's one-way delay to each host in use, ms
        self._underlay_log: list[dict[str, Any]] = []  # each measurement during play (progress hands it on)
        self._underlay_stop = threading.Event()
        self._underlay_thread: threading.Thread | None = None
        # this host's machine while it plays (emulator.validity.HostMonitor), into a file collect() hands back
        self._monitor: Any = None
        self._monitor_path: str | None = None
        # bytes through this host's links (emulator.linkload.LinkLoadLog) while a traffic matrix runs, and the
        # last step play() applies (the final sample is that step's)
        self._loadlog: Any = None
        self._last_step = 0
        # this host's compute nodes' services (emulator.traffic.compute.ComputeServices) and their whereami.json
        self._compute: Any = None
        self._whereami: Any = None
        # all-reduces whose ranks are on several hosts: their barrier files, copied to the other hosts
        self._barriers: dict[int, Path] = {}  # the flow's barrier folder here, by the flow's index
        self._barrier_inbox: dict[int, list[tuple[str, str]]] = {}  # files that came before the folder
        self._barrier_lock = threading.Lock()
        self._relay_stop = threading.Event()
        self._relay: threading.Thread | None = None
        # a two-sided flow whose receiver runs on another host: set when that host says it is ready (flow_ready)
        self._ready: dict[int, threading.Event] = {}
        self._collecting = False  # collect() has begun: a sender still waiting for its receiver does not start
        # the programs of 'best' flows' migrations started here for the head (move_start), by key
        self._moves: list[subprocess.Popen[Any]] = []

    def versions(self) -> dict[str, str]:
        """Python, Ray and satnetem versions on this host."""
        return _versions()

    def now_ns(self) -> int:
        """This host's clock (CLOCK_REALTIME), ns."""
        return time.time_ns()

    def underlay_address(self, toward: str) -> str:
        """This host's source address towards ``toward`` (the head's address): the one its VXLAN ends use.
        No packet is sent (a UDP socket's connect only chooses the route)."""
        import socket

        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.connect((toward, 9))
            return str(s.getsockname()[0])
        finally:
            s.close()

    def build(self, timeline: Timeline, host_of: np.ndarray, underlay: tuple[str, ...], run_id: str,
              protocol: str = "shortest-delay", shaper: str = "auto", seed: int = 0, vni_base: int = 1,
              queue_packets: dict[str, int] | None = None, correct_underlay: bool = True,
              compute: dict[str, Any] | None = None) -> dict[str, Any]:
        """Build this host's part of ``timeline`` at step 0.

        With ``compute`` (``work_ms``: a request's default work; ``throttle_share``: a throttled node's share,
        or None), the services of the compute nodes built here start as on one host (their capacity in
        cgroups, ``whereami.json`` at step 0, each step's power state enforced while playing).

        With ``correct_underlay``, the underlay's one-way delay to every other host is measured first (half
        the least RTT of 20 pings, :func:`emulator.cluster.underlay.measure`) and subtracted from what this
        host sends there (:attr:`emulator.cluster.part.HostPart.underlay_ms`); a link shorter than the
        underlay is warned of and carries the underlay's delay.

        Returns
        -------
        dict
            ``host``, ``run_id``, ``holder`` (pid of the namespace holder), ``namespaces`` (node name ->
            path of its namespace, readable by root on this host), ``shaper`` (the backend and why),
            ``timings_ms`` (the build's), ``cross_ends`` (VXLAN ends made here), ``underlay`` (per host:
            one-way ms and jitter ms measured, or None), ``underlay_too_slow`` (directions sent to another
            host at step 0 whose link's delay is below the underlay's).
        """
        from ..network import Emulation
        from ..shaping import make_shaper
        from .part import HostPart
        from .underlay import measure

        if self.emu is not None:
            raise ApplyError(f"host {self.host} has built already", operation="build")
        addr = underlay[self.host]
        others = [h for h in range(len(underlay)) if h != self.host]
        one_way: tuple[float, ...] | None = None
        seen: list[dict[str, float] | None] = [None] * len(underlay)
        if correct_underlay and others:
            paths = measure([underlay[h] for h in others], count=20, interval_s=0.01)
            lost = [underlay[h] for h, p in zip(others, paths) if p.received == 0]
            if lost:
                raise ApplyError(f"host {self.host} ({addr}) gets no ping answer from {', '.join(lost)} over the "
                                 f"underlay", operation="underlay")
            ms = [0.0] * len(underlay)
            for h, p in zip(others, paths):
                ms[h] = p.one_way_ms
                seen[h] = {"one_way_ms": p.one_way_ms, "jitter_ms": p.jitter_ms}
            one_way = tuple(ms)
            self._one_way = ms
        self._underlay = tuple(underlay)
        part = HostPart(self.host, np.asarray(host_of, np.int64), tuple(underlay), _ifindex_of(addr),
                        vni_base=vni_base, underlay_ms=one_way)
        sh, why = make_shaper(shaper, seed)
        # no route worker: a fork of a Ray worker (gRPC threads) is not safe; step 0 is computed in-process
        emu = Emulation(timeline, sh, protocol, run_id=host_run_id(run_id, self.host), part=part, route_worker=False)
        emu.queue_packets = queue_packets
        self.emu = emu
        emu.build()  # stops itself on failure
        here = np.flatnonzero(part.local)
        near, far = timeline.link_a.astype(np.int64), timeline.peer[:, 0].astype(np.int64)
        ok = far >= 0
        far0 = np.maximum(far, 0)
        crossing = ok & (part.local[near] != part.local[far0])
        too_slow = 0
        if one_way is not None:  # each crossing slot's direction that leaves here, against its receiver's host
            x = np.flatnonzero(crossing)
            receiver = np.where(part.local[near[x]], far0[x], near[x])
            too_slow = int((timeline.delay_ms[x, 0] < np.asarray(one_way)[part.host_of[receiver]]).sum())
            if too_slow:
                log.warning("host %d: %d links to other hosts are shorter than the underlay between them: they "
                            "carry the underlay's delay", self.host, too_slow)
        services = self._start_compute(compute) if compute is not None else None
        assert emu.holder is not None
        return {"host": self.host, "run_id": emu.run_id, "holder": emu.holder.pid, "address": addr, "pid": os.getpid(),
                "compute_services": services,
                "namespaces": {emu.names[i]: emu.nodes[i].ns_path for i in here.tolist()}, "shaper": why,
                "shaper_name": sh.name, "nodes": int(len(here)), "vni_base": vni_base,
                "timings_ms": emu.build_timings_ms, "cross_ends": int(crossing.sum()), "underlay": seen,
                "underlay_too_slow": too_slow}

    def _start_compute(self, compute: dict[str, Any]) -> dict[str, Any] | None:
        """The services of this host's compute nodes (None: it has none); what they cost, as the single-host
        summary's ``compute_services``."""
        from ..traffic.compute import ComputeServices, WhereamiWriter, node_services, services_cost

        nodes = node_services(self.emu)
        if not nodes:
            return None
        t = time.monotonic()
        svc = ComputeServices(self.emu.run_id, work_ms=float(compute.get("work_ms", 5.0)))
        self._compute = svc
        svc.start(nodes)
        self._whereami = WhereamiWriter(svc, self.emu.timeline, compute.get("throttle_share"))
        self._whereami.post(0)
        return {**services_cost(svc, time.monotonic() - t), "uid": svc.uid, "capacity": svc.describe()}

    def apply_step(self, step: int) -> dict[str, Any]:
        """Bring this host's part to timeline step ``step`` (:meth:`emulator.network.Emulation.apply_step`);
        its counts and timings."""
        if self.emu is None:
            raise ApplyError(f"host {self.host} has not built", operation="apply_step")
        return dict(self.emu.apply_step(step).as_dict())

    def play(self, start_ns: int, last: int, speed: float = 1.0, underlay_every_s: float = 0.0,
             clock_priority: int = 0) -> None:
        """Apply steps 1 .. ``last`` each at ``start_ns`` + k x step_s by this host's clock, in a thread of
        this actor (returns at once; :meth:`progress` tells how far it got, :meth:`stop` ends it).

        The loop is the single-host run's (:class:`emulator.clock.Playback` with the emulation's
        ``apply_step``, ``settle`` and ``prepare_ahead``), due by CLOCK_REALTIME, the one clock the hosts
        share (kept in step by NTP/PTP and checked at start, :func:`check_clocks`): a step of this host's
        wall clock (NTP setting it again) moves its later steps with it, so that it stays in step with the
        other hosts' clocks, and its record of each step (``due_ns``, ``begin_ns``, ``end_ns``) is on that
        one clock.

        Parameters
        ----------
        start_ns : int
            The instant step 0 counts as applied, ns since 1970 (CLOCK_REALTIME).
        last : int
            Last step to apply.
        speed : float
            Playback speed: step k is due at ``start_ns`` + k x step_s / speed.
        underlay_every_s : float
            Measure the underlay to the other hosts again this often while playing, s (0: only at the build):
            :meth:`remeasure_underlay`.
        clock_priority : int
            The loop's thread plays at SCHED_FIFO with this priority (``[emulation] clock_priority``; 0: normal
            scheduling).

        Raises
        ------
        ApplyError
            Not built, or playing already.
        """
        from ..clock import Playback

        if self.emu is None:
            raise ApplyError(f"host {self.host} has not built", operation="play")
        if self._player is not None:
            raise ApplyError(f"host {self.host} is playing already", operation="play")
        step_ns = int(round(self.emu.timeline.step_s / speed * 1e9))
        emu = self.emu
        self._last_step = last

        def apply(k: int) -> Any:
            # a routing daemon of this host that ended fails the step, which stops every host (its routes are
            # no longer kept; the single-host run's watchdog does the same)
            ended = emu.protocol.health() if emu.daemon_driven else None
            if ended:
                raise ApplyError(f"host {self.host}: {ended}", operation="step")
            # this host's own record: when step k's apply began and ended, by the clock the start is given in
            begin = time.time_ns()
            stats = emu.apply_step(k)
            end = time.time_ns()
            due = start_ns + k * step_ns
            self._played.append({"step": k, "due_ns": due, "begin_ns": begin, "end_ns": end,
                                 "late_ms": (begin - due) / 1e6, "apply_ms": (end - begin) / 1e6,
                                 "stats": stats.as_dict()})
            if self._loadlog is not None:  # after the step's record, as the single-host runner samples
                self._loadlog.sample(k)
            if self._whereami is not None:
                self._whereami.post(k)
            return stats

        pb = Playback(emu.timeline.step_s, 0, last, apply, speed, ahead=emu.prepare_ahead, settle=emu.settle,
                      rt_priority=clock_priority, hold_last=True, clock=time.time)
        self._playback = pb

        def loop() -> None:
            try:
                pb.run(start_ns / 1e9)
            except Exception as e:  # noqa: BLE001 - handed to the driver by progress(), which names the host
                log.exception("host %d: the run failed", self.host)
                self._play_error = f"{type(e).__name__}: {e}"

        self._player = threading.Thread(target=loop, name=f"satnetem-play-h{self.host}", daemon=True)
        self._start_monitor(time.monotonic() + (start_ns - time.time_ns()) / 1e9)
        self._player.start()
        if underlay_every_s > 0 and self._one_way is not None:
            self._underlay_stop.clear()
            self._underlay_thread = threading.Thread(target=self._remeasure_loop, args=(float(underlay_every_s),),
                                                     name=f"satnetem-underlay-h{self.host}", daemon=True)
            self._underlay_thread.start()

    def _start_monitor(self, t0: float) -> None:
        """This host's rows of the run's ``monitor.csv`` (CPU busy and wait, the delay daemon's release
        lateness; seconds after the run's start ``t0``, this host's CLOCK_MONOTONIC), written from now until
        :meth:`collect`, which hands them back for the head to merge (:func:`emulator.cluster.run.merge_monitors`)."""
        import tempfile

        from ..validity import HostMonitor

        fd, path = tempfile.mkstemp(prefix=f"satnetem-{self.emu.run_id}-monitor-", suffix=".csv")
        os.close(fd)
        self._monitor_path = path
        self._monitor = HostMonitor(Path(path), t0, self.emu.shaper)
        self._monitor.start()

    def _monitor_rows(self) -> bytes:
        """Stop the monitor; its file's content (removed here), or nothing."""
        if self._monitor is not None:
            self._monitor.stop()
            self._monitor = None
        if self._monitor_path is None:
            return b""
        try:
            return Path(self._monitor_path).read_bytes()
        except OSError:
            return b""
        finally:
            Path(self._monitor_path).unlink(missing_ok=True)
            self._monitor_path = None

    def _remeasure_loop(self, every_s: float) -> None:
        player = self._player
        while not self._underlay_stop.wait(every_s) and player is not None and player.is_alive():
            try:
                self.remeasure_underlay()
            except Exception as e:  # noqa: BLE001 - a failed measurement keeps the last one; it is logged
                log.warning("host %d: the underlay could not be measured again: %s", self.host, e)
                self._underlay_log.append({"t_ns": time.time_ns(), "error": str(e)})

    def remeasure_underlay(self, count: int = 10) -> list[dict[str, Any]]:
        """Measure the underlay's one-way delay to every other host again (half the least RTT of ``count``
        pings each, :func:`emulator.cluster.underlay.measure`) and shape what this host sends there with it from
        the next step on (:meth:`emulator.network.Emulation.set_underlay`). A host that answers no ping keeps
        its last figure (recorded with ``received`` 0). Links to another host shorter than the underlay at the
        step applied last are counted (``too_slow``) and warned of.

        Returns
        -------
        list of dict
            One per other host: ``t_ns`` (this host's CLOCK_REALTIME), ``to`` (host), ``one_way_ms``,
            ``jitter_ms``, ``received``, ``too_slow``; also appended to what :meth:`progress` hands back.
        """
        from .underlay import measure

        if self.emu is None or self._one_way is None:
            raise ApplyError(f"host {self.host} has not built with the underlay measured", operation="underlay")
        others = [h for h in range(len(self._underlay)) if h != self.host]
        paths = measure([self._underlay[h] for h in others], count=count, interval_s=0.01)
        t_ns = time.time_ns()
        ms = list(self._one_way)
        for h, p in zip(others, paths):
            if p.received:
                ms[h] = p.one_way_ms
        self._one_way = ms
        emu = self.emu
        emu.set_underlay(ms)
        snap = emu.applied
        tl = emu.timeline
        x = emu._cross_links(snap)  # noqa: SLF001 - the agent reads its own part's links
        part = emu.part
        far = snap.peer[x].astype(np.int64)
        near = tl.link_a[x].astype(np.int64)
        receiver = np.where(part.local[near], far, near)
        short = snap.params[x, 0] < np.asarray(ms)[part.host_of[receiver]]
        rows = []
        for h, p in zip(others, paths):
            too_slow = int(short[part.host_of[receiver] == h].sum())
            rows.append({"t_ns": t_ns, "to": h, "one_way_ms": p.one_way_ms if p.received else None,
                         "jitter_ms": p.jitter_ms if p.received else None, "received": p.received,
                         "too_slow": too_slow})
            if too_slow:
                log.warning("host %d: %d links to host %d are shorter than the underlay (%.3f ms one way): they "
                            "carry the underlay's delay", self.host, too_slow, h, ms[h])
        self._underlay_log.extend(rows)
        return rows

    def start_flows(self, flows: list[tuple[int, Any, float]], start_ns: int, speed: float,
                    matrix_plans: dict[int, Any] | None = None,
                    schedules: dict[int, list[dict[str, Any]]] | None = None,
                    peers: list[Any] | None = None) -> list[str]:
        """Start, on this host, the programs of the flows whose source or destination node is here, each
        ``start_s`` / ``speed`` after ``start_ns`` (CLOCK_REALTIME), as a single-host run does
        (:class:`emulator.flows.FlowStarter`), into a folder of this host that :meth:`collect` hands back. A flow
        with a receiving program (:data:`emulator.flows.TWO_SIDED_KINDS`) whose two ends are on two hosts runs
        its receiver on the destination's host and its sender on the source's, which lists it. A traffic
        matrix runs the programs of its endpoints on their hosts, all sending from the same instant; with one,
        this host also records the bytes through the links whose near end it has, after every step, as one
        host does (:mod:`emulator.linkload`).

        Parameters
        ----------
        flows : list of (int, TrafficSpec, float)
            The flow's index in the scenario, its spec and its wall-clock duration, s.
        matrix_plans : dict of int to topologies.traffic_matrix.MatrixPlan
            Each matrix flow's plan by its index (made on the head, which has the scenario's files).
        schedules : dict of int to list of dict
            A request flow's schedule of targets by its index (policy ``nearest``: made on the head, from the
            routing protocol's predictions).
        peers : list of ray.actor.ActorHandle
            Every host's agent, by host. A flow whose receiver runs on another host starts its sender once that
            host has said the receiver is ready (:meth:`flow_ready`; at most
            :data:`emulator.flows.RECEIVER_READY_S` later). An all-reduce whose ranks are on several hosts
            runs its ranks on their hosts, and each host copies the files its ranks drop into the round
            barrier's folder to the other hosts of the ring (:meth:`barrier_put`); the ranks start a round
            :data:`BARRIER_MARGIN_S` after the last one finished the round before, by their own host's clock.
            The host of the first rank lists the flow.

        Returns
        -------
        list of str
            Labels of the flows started here (``(receiver)`` after those whose receiver only runs here,
            ``(part)`` after a matrix listed by another host).
        """

        from ..flows import RECEIVER_LEAD_S, RECEIVER_READY_S, TWO_SIDED_KINDS, FlowStarter, receiver_ready

        if self.emu is None:
            raise ApplyError(f"host {self.host} has not built", operation="start_flows")
        here, index = self.emu.local, self.emu.timeline.node_index
        host_of = self.emu.part.host_of
        plans = matrix_plans or {}
        mine = []
        relays: dict[int, tuple[set[str], list[int]]] = {}  # an all-reduce's ranks here, and its other hosts
        for i, f, d in flows:
            if f.kind == "allreduce":
                hosts = sorted({int(host_of[index(n)]) for n in f.nodes})
                if self.host in hosts:
                    mine.append((i, f, d, "both" if here[index(f.nodes[0])] else "part"))
                    if len(hosts) > 1:
                        relays[i] = ({str(r) for r, n in enumerate(f.nodes) if here[index(n)]},
                                     [h for h in hosts if h != self.host])
                continue
            if f.kind == "matrix":
                plan = plans.get(i)
                if plan is None:
                    raise ApplyError(f"host {self.host}: matrix flow {f.label} comes without its plan",
                                     operation="start_flows")
                if any(here[index(n)] for n in plan.endpoints):
                    mine.append((i, f, d, "part" if not here[index(plan.endpoints[0])] else "both"))
                continue
            src = bool(here[index(f.src)])
            dst = bool(here[index(f.dst)]) if f.dst else src  # a request without dst: its client alone
            if f.kind not in TWO_SIDED_KINDS or src == dst:
                if src:
                    mine.append((i, f, d, "both"))
            else:
                mine.append((i, f, d, "send" if src else "recv"))
        if not mine and not plans:
            return []
        starter = self._starter = FlowStarter(self.emu, self._host_dir(), speed)
        starter.matrix_plans = dict(plans)
        if self._compute is not None:
            starter.groups = self._compute.groups  # the all-reduce's ranks run inside their nodes' groups
        if relays:
            if peers is None or len(peers) <= max(h for _, hs in relays.values() for h in hs):
                raise ApplyError(f"host {self.host}: an all-reduce spans hosts, and the other hosts' agents were not "
                                 "given", operation="start_flows")
            labels = {i: f.label for i, f, _ in flows}
            with self._barrier_lock:
                for i in relays:
                    starter.barrier_margins_s[i] = BARRIER_MARGIN_S
                    folder = self._flow_dir(labels[i]) / "barrier"
                    folder.mkdir(exist_ok=True)
                    self._barriers[i] = folder
                    for name, text in self._barrier_inbox.pop(i, []):
                        _put_file(folder, name, text)
            self._relay_stop.clear()
            self._relay = threading.Thread(target=self._relay_barriers, args=(relays, peers),
                                           name=f"satnetem-barrier-h{self.host}", daemon=True)
            self._relay.start()
        if plans:  # background load: bytes per link per step, sampled by play()'s steps
            from ..linkload import LinkCounters, LinkLoadLog

            self._loadlog = LinkLoadLog(LinkCounters(self.emu), self._host_dir() / "linkload.csv")

        def start(i: int, f: Any, d: float, side: str) -> None:
            at = start_ns / 1e9 + f.start_s / speed
            try:
                if side == "send" and peers is not None:  # the receiver's host says when it is ready
                    if not self._ready_event(i).wait(RECEIVER_READY_S):
                        log.warning("host %d: flow %s: its receiver's host did not say it was ready in %g s; the "
                                    "sender starts anyway", self.host, f.label, RECEIVER_READY_S)
                    if self._collecting:  # the run ended meanwhile
                        return
                flow = starter.start(i, f, max(1.0, d), (schedules or {}).get(i),
                                     side="both" if side == "part" else side, at_unix_s=at)
                if side == "recv" and peers is not None:
                    receiver_ready(self.emu, i, f, flow.procs[0])
                    peers[int(host_of[index(f.src)])].flow_ready.remote(i)
            except Exception as e:  # noqa: BLE001 - on a timer's thread: said in collect(), by flow
                log.exception("host %d: flow %s did not start", self.host, f.label)
                self._flow_errors.append(f"flow {f.label} could not start on host {self.host}: {e}")

        for i, f, d, side in mine:
            # a receiver whose sender is on another host starts first: that host cannot see when it is ready
            wait_s = (start_ns - time.time_ns()) / 1e9 + f.start_s / speed - (RECEIVER_LEAD_S if side == "recv" else 0)
            t = threading.Timer(max(0.0, wait_s), start, (i, f, d, side))
            t.daemon = True
            self._flow_timers.append(t)
            t.start()
        return [f.label + {"recv": " (receiver)", "part": " (part)"}.get(side, "") for _, f, _, side in mine]

    def _relay_barriers(self, relays: dict[int, tuple[set[str], list[int]]], peers: list[Any]) -> None:
        """Copy each file this host's ranks drop into an all-reduce's barrier folder (``<round>.<rank>``) to
        the other hosts of its ring, once, until :meth:`collect`."""
        sent: set[tuple[int, str]] = set()
        while not self._relay_stop.wait(BARRIER_POLL_S):
            for i, (ranks, hosts) in relays.items():
                folder = self._barriers[i]
                try:
                    names = os.listdir(folder)
                except OSError:
                    continue
                for name in names:
                    rnd, _, rank = name.partition(".")
                    if rank not in ranks or not rnd.isdigit() or (i, name) in sent:
                        continue  # another host's rank, a rank's temporary file, or copied already
                    try:
                        text = (folder / name).read_text()
                    except OSError:
                        continue
                    for h in hosts:
                        peers[h].barrier_put.remote(i, name, text)  # one way: the rank waits for the answer
                    sent.add((i, name))

    def _ready_event(self, i: int) -> threading.Event:
        with self._barrier_lock:
            return self._ready.setdefault(i, threading.Event())

    def flow_ready(self, i: int) -> None:
        """Flow ``i``'s receiver, on the calling host, has bound its port: this host's sender may start
        (:meth:`start_flows`)."""
        self._ready_event(i).set()

    def barrier_put(self, i: int, name: str, text: str) -> None:
        """Another host's rank of all-reduce ``i`` finished a round (:meth:`start_flows`): its file
        ``name`` (``<round>.<rank>``, holding the time) goes into this host's barrier folder of the flow."""
        rnd, _, rank = name.partition(".")
        if not (rnd.isdigit() and rank.isdigit()):
            raise ApplyError(f"host {self.host}: not a barrier file: {name!r}", operation="barrier")
        with self._barrier_lock:
            folder = self._barriers.get(i)
            if folder is None:  # before this host's start_flows
                self._barrier_inbox.setdefault(i, []).append((name, text))
                return
        _put_file(folder, name, text)

    def _host_dir(self) -> Path:
        """This host's folder of flow files, which :meth:`collect` hands back (made if new)."""
        import tempfile

        if self.emu is None:
            raise ApplyError(f"host {self.host} has not built", operation="flows")
        if self._flows_dir is None:
            self._flows_dir = tempfile.mkdtemp(prefix=f"satnetem-{self.emu.run_id}-flows-")
        return Path(self._flows_dir)

    def _flow_dir(self, label: str) -> Path:
        """Flow ``label``'s folder among this host's flow files (made, with the host's folder, if new)."""
        from ..flows import safe_label

        d = self._host_dir() / "flows" / safe_label(label)
        d.mkdir(parents=True, exist_ok=True)
        return d

    @staticmethod
    def _file_name(name: str) -> str:
        if not name or Path(name).name != name or name.startswith("."):
            raise ApplyError(f"not a file name: {name!r}", operation="migration")
        return name

    def node_address(self, node: str) -> str:
        """Node ``node``'s address (the run's address plan, the same on every host)."""
        if self.emu is None:
            raise ApplyError(f"host {self.host} has not built", operation="node_address")
        return str(self.emu.address_of(node))

    def move_start(self, label: str, node: str, args: list[str], log_name: str, out_name: str | None) -> int:
        """For the head's migration of ``best`` flow ``label`` (:class:`emulator.cluster.run.ClusterMoves`):
        ``python -m emulator.traffic.migrate ARGS`` in this host's node ``node`` (``--out`` the flow folder's
        ``out_name`` when given), its output in ``log_name`` there. Returns the program's key."""
        d = self._flow_dir(label)
        argv = [sys.executable, "-m", "emulator.traffic.migrate", *[str(a) for a in args]]
        if out_name is not None:
            argv += ["--out", str(d / self._file_name(out_name))]
        with open(d / self._file_name(log_name), "w") as f:
            self._moves.append(self.emu.node(node).popen(argv, stdout=f, stderr=subprocess.STDOUT))
        return len(self._moves) - 1

    def move_poll(self, key: int) -> int | None:
        """The exit status of program ``key`` (:meth:`move_start`), None while it runs."""
        return self._moves[key].poll()

    def move_kill(self, key: int) -> None:
        p = self._moves[key]
        if p.poll() is None:
            p.kill()
        p.wait()

    def move_read(self, label: str, name: str) -> str | None:
        """The text of ``name`` in flow ``label``'s folder here (a transfer's record), None if absent."""
        try:
            return (self._flow_dir(label) / self._file_name(name)).read_text()
        except OSError:
            return None

    def move_switch(self, label: str, target: str) -> None:
        """The client of ``best`` flow ``label`` (here) sends its next requests to ``target``."""
        from ..migration import switch_schedule

        switch_schedule(self._flow_dir(label) / "schedule.json", target)

    def _end_moves(self) -> None:
        for p in self._moves:
            if p.poll() is None:
                p.kill()
            p.wait()
        self._moves = []

    def _stop_relay(self) -> None:
        self._relay_stop.set()
        if self._relay is not None:
            self._relay.join()
            self._relay = None
        with self._barrier_lock:
            self._barriers = {}
            self._barrier_inbox = {}

    def collect(self, wait_s: float = 5.0, receiver_grace_s: float = 3.0) -> dict[str, Any]:
        """End this host's flows (each gets up to ``wait_s`` to finish, as on one host) and hand back what
        they wrote: ``files`` (path relative to the results folder -> bytes), ``errors`` (flows that did not
        start), ``monitor`` (this host's ``monitor.csv``, bytes), ``routing_daemons`` (a daemon-driven protocol's
        ``stats()`` for this host's daemons, else None), ``shaper_stats`` (the shaper's own counters: the delay
        daemon's, with its lateness histogram; ``{}`` for the kernel's qdiscs). The folder on this host is
        removed; a traffic matrix's ``linkload.csv`` is among the files.

        Every host collects at once: the receivers of flows whose sender runs on another host end last, up to
        ``receiver_grace_s`` after this host's own flows, so that what the senders (stopped at the same
        deadline on their hosts) sent last is received, as on one host, where a flow stops its sender first."""
        import shutil

        self._collecting = True
        with self._barrier_lock:
            for ev in self._ready.values():  # a sender waiting for its receiver wakes, and does not start
                ev.set()
        for t in self._flow_timers:
            t.cancel()
        self._flow_timers = []
        files: dict[str, bytes] = {}
        if self._loadlog is not None:
            try:  # the last step's bytes; a failure here must not stop the collection
                self._loadlog.sample(self._last_step + 1)
            except SatnetemError as e:
                log.warning("host %d: last link counter sample failed: %s", self.host, e)
            self._loadlog.close()
            self._loadlog = None
        if self._starter is not None:
            deadline = time.monotonic() + wait_s
            for fl in self._starter.flows:
                if fl.listed:
                    fl.wait(timeout_s=max(0.1, deadline - time.monotonic()))
            deadline = max(deadline, time.monotonic() + receiver_grace_s)
            for fl in self._starter.flows:
                if not fl.listed:
                    fl.wait(timeout_s=max(0.1, deadline - time.monotonic()))
            self._stop_relay()
            self._starter.stop_all()
            self._starter = None
        self._end_moves()
        if self._flows_dir is not None:
            root = Path(self._flows_dir)
            for p in sorted(root.rglob("*")):
                if p.is_file():
                    files[str(p.relative_to(root))] = p.read_bytes()
            shutil.rmtree(root, ignore_errors=True)
            self._flows_dir = None
        routing = self.emu.protocol.stats() if self.emu is not None and self.emu.daemon_driven else None
        shaper: dict[str, Any] = {}
        if self.emu is not None:
            try:  # the backend's own account (the delay daemon's release times), as one host's summary has it
                shaper = self.emu.shaper.stats()
            except SatnetemError as e:
                log.warning("host %d: shaper statistics unavailable: %s", self.host, e)
        return {"host": self.host, "files": files, "errors": list(self._flow_errors), "monitor": self._monitor_rows(),
                "routing_daemons": routing, "shaper_stats": shaper}

    def addresses(self, steps: int) -> dict[str, dict[str, str]]:
        """Every interface address and its node (:func:`emulator.runner.address_owners`: the same on every
        host, computed from the whole timeline)."""
        from ..runner import address_owners

        if self.emu is None:
            raise ApplyError(f"host {self.host} has not built", operation="addresses")
        return address_owners(self.emu, self.emu.timeline, steps)

    def progress(self) -> dict[str, Any]:
        """How far :meth:`play` got: ``host``, ``steps`` (one dict per step applied: ``step``, ``due_ns``,
        ``begin_ns``, ``end_ns`` by this host's CLOCK_REALTIME, ``late_ms`` of the apply's beginning,
        ``apply_ms``), ``done`` (the loop ended), ``error`` (what ended it early, or None), ``underlay`` (the
        measurements of :meth:`remeasure_underlay` so far)."""
        done = self._player is not None and not self._player.is_alive()
        return {"host": self.host, "steps": list(self._played), "done": done, "error": self._play_error,
                "underlay": list(self._underlay_log)}

    def stop(self) -> dict[str, Any]:
        """End :meth:`play`'s loop if it runs (after the step it is applying), then tear this host's part down
        (idempotent); returns the pids of the run still alive (none expected)."""
        from ..clean import find_ours

        self._underlay_stop.set()
        self._stop_relay()
        if self._player is not None:
            self._playback.stop()
            self._player.join()
        if self._underlay_thread is not None:
            self._underlay_thread.join()
            self._underlay_thread = None
        if self._starter is not None or self._flows_dir is not None:
            self.collect(wait_s=0.0)
        self._monitor_rows()  # not collected (a fault, an interrupt): stopped, its file removed
        cgroups_left: list[str] = []
        if self._whereami is not None:
            self._whereami.close()
            self._whereami = None
        if self._compute is not None:
            cgroups_left = list(self._compute.stop() or [])
            self._compute = None
        if self.emu is None:
            return {"host": self.host, "left": []}
        rid = self.emu.run_id
        self.emu.stop()
        self.emu = None
        pids, _ = find_ours(rid)
        return {"host": self.host, "left": sorted(pids), "cgroups_left": cgroups_left}


def _versions() -> dict[str, str]:
    import importlib.metadata
    import platform

    import ray

    return {"python": platform.python_version(), "ray": str(ray.__version__),
            "satnetem": importlib.metadata.version("satnetem")}


def check_versions(mine: dict[str, str], theirs: list[dict[str, str]]) -> None:
    """Refuse hosts that run another Python, Ray or satnetem than the driver.

    Raises
    ------
    ConfigError
        One line naming the first such host and each version that differs.
    """
    for h, v in enumerate(theirs):
        bad = [f"{k} {v.get(k)} (driver: {mine[k]})" for k in sorted(mine) if v.get(k) != mine[k]]
        if bad:
            raise ConfigError(f"host {h} runs {', '.join(bad)}: every host must run the same", key="cluster")


def check_clocks(offsets: list[Any], limit_ms: float) -> None:
    """Refuse when a host's clock is off the driver's by more than ``limit_ms`` even at the most favourable
    end of its estimate (:meth:`emulator.cluster.clocks.ClockOffset.exceeds`).

    Raises
    ------
    ConfigError
        One line naming the first such host, its offset and the bound.
    """
    for h, off in enumerate(offsets):
        if off.exceeds(limit_ms):
            raise ConfigError(f"host {h}'s clock is {off.offset_ms:+.3f} +- {off.bound_ms:.3f} ms off the driver's, "
                              f"beyond max_clock_offset_ms {limit_ms:g}: synchronise the hosts' clocks (NTP/PTP)",
                              key="max_clock_offset_ms")


def measure_clocks(agents: list[Any], samples: int = CLOCK_SAMPLES) -> list[Any]:
    """Each agent's clock against this process's, from ``samples`` actor calls each
    (:func:`emulator.cluster.clocks.offset`)."""
    import ray

    from .clocks import offset

    out = []
    for a in agents:
        ex = []
        for _ in range(samples):
            t0 = time.time_ns()
            t1 = ray.get(a.now_ns.remote(), timeout=60)
            ex.append((t0, t1, time.time_ns()))
        out.append(offset(*(np.array(c, np.int64) for c in zip(*ex))))
    return out


def _ifindex_of(address: str) -> int:
    """Index of the interface holding IPv4 ``address`` in this process's namespace."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.get_addr(family=2, address=address)
    if not found:
        raise ConfigError(f"no interface here has the underlay address {address}", key="underlay")
    return int(found[0]["index"])


@dataclass
class Cluster:
    """A clustered emulation's handle in the driver.

    Attributes
    ----------
    placement : Placement
    underlay : tuple of str
        Each host's underlay address.
    builds : list of dict
        What each agent's :meth:`HostAgent.build` returned, by host.
    clocks : list of ClockOffset
        Each host's clock against the driver's, measured at the start.
    """

    agents: list[Any]
    placement: Placement
    underlay: tuple[str, ...]
    builds: list[dict[str, Any]] = field(default_factory=list)
    clocks: list[Any] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)

    def apply_step(self, step: int, timeout_s: float = 120.0) -> list[dict[str, Any]]:
        """Every agent applies ``step`` now (at once, each on its host); their counts
        (:meth:`HostAgent.apply_step`). :meth:`play` applies steps on the hosts' clocks instead.

        Raises
        ------
        ApplyError
            An agent is gone (its process or host died): names the host; every other agent has torn its
            part down by then (the dead one's namespaces went with its process: the holder ends with it).
        """
        import ray
        from ray.exceptions import RayActorError

        refs = [a.apply_step.remote(step) for a in self.agents]
        out: list[dict[str, Any]] = []
        dead: list[int] = []
        for h, r in enumerate(refs):
            try:
                out.append(ray.get(r, timeout=timeout_s))
            except RayActorError:
                dead.append(h)
        if dead:
            self._abort(f"host {dead[0]} ({self.underlay[dead[0]]}) is gone: its agent died before step {step}",
                        dead, timeout_s)
        return out

    def play(self, last: int, lead_s: float = START_LEAD_S, poll_s: float = 0.2, timeout_s: float = 30.0,
             on_start: Any = None, speed: float = 1.0, underlay_every_s: float = 0.0,
             clock_priority: int = 0) -> list[dict[str, Any]]:
        """Every host applies steps 1 .. ``last``, step k at start + k x step_s by its own clock
        (:meth:`HostAgent.play`); the start is ``lead_s`` after now on this process's CLOCK_REALTIME, told to
        every agent once. Then this only polls each agent's progress every ``poll_s`` until all are done.

        Parameters
        ----------
        on_start : callable, optional
            Called with the start (ns since 1970) once every agent has it.
        underlay_every_s : float
            Each agent measures the underlay again this often while it plays (:meth:`HostAgent.play`).
        clock_priority : int
            Each agent's loop plays at SCHED_FIFO with this priority (0: normal scheduling).

        Returns
        -------
        list of dict
            Each host's :meth:`HostAgent.progress` at the end (its steps, with their lateness).

        Raises
        ------
        ApplyError
            An agent is gone or does not answer within ``timeout_s``, or its step failed: names the host (and
            the step); every other agent has torn its part down by then.
        """
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        start_ns = time.time_ns() + int(lead_s * 1e9)
        try:
            ray.get([a.play.remote(start_ns, last, speed, underlay_every_s, clock_priority) for a in self.agents],
                    timeout=timeout_s)
        except (RayActorError, GetTimeoutError):
            pass  # the poll below names the host
        if on_start is not None:
            on_start(start_ns)
        seen: list[dict[str, Any]] = [{"steps": [], "done": False, "error": None} for _ in self.agents]
        while True:
            refs = [a.progress.remote() for a in self.agents]
            dead: list[int] = []
            for h, r in enumerate(refs):
                try:
                    seen[h] = ray.get(r, timeout=timeout_s)
                except (RayActorError, GetTimeoutError):
                    dead.append(h)
            if dead:
                h = dead[0]
                self._abort(f"host {h} ({self.underlay[h]}) is gone: its agent died or stopped answering during "
                            f"the run, before step {len(seen[h]['steps']) + 1}", dead, timeout_s)
            failed = [h for h, p in enumerate(seen) if p["error"] is not None]
            if failed:
                h = failed[0]
                self._abort(f"host {h} ({self.underlay[h]}) failed at step {len(seen[h]['steps']) + 1}: "
                            f"{seen[h]['error']}", [], timeout_s)
            if all(p["done"] for p in seen):
                return seen
            time.sleep(poll_s)

    def _abort(self, why: str, dead: list[int], timeout_s: float) -> None:
        """Every agent but ``dead`` tears its part down; then raise ApplyError ``why``."""
        import ray
        from ray.exceptions import RayActorError

        alive = [a for h, a in enumerate(self.agents) if h not in dead]
        try:
            ray.get([a.stop.remote() for a in alive], timeout=timeout_s)
        except RayActorError:
            log.warning("another agent died while the others stopped")
        raise ApplyError(f"{why}; the other hosts stopped", operation="step")

    def stop(self, timeout_s: float = 120.0) -> list[dict[str, Any]]:
        """Every agent tears its part down; their answers (:meth:`HostAgent.stop`)."""
        import ray

        return list(ray.get([a.stop.remote() for a in self.agents], timeout=timeout_s))


def start(head_addr: str, timeline: Timeline, n_hosts: int, run_id: str, strategy: str = "plane",
          protocol: str = "shortest-delay", shaper: str = "auto", seed: int = 0,
          max_clock_offset_ms: float = MAX_CLOCK_OFFSET_MS, vni_base: int = 1,
          queue_packets: dict[str, int] | None = None, say: Any = None,
          compute: dict[str, Any] | None = None) -> Cluster:
    """Place ``timeline`` on ``n_hosts`` hosts and have one agent per host build its part (the caller is a
    Ray driver already: :func:`ray.init` done). Before anything is built, every host must run the driver's
    Python, Ray and satnetem, and its clock must be within ``max_clock_offset_ms`` of the driver's.

    Parameters
    ----------
    head_addr : str
        The head's IPv4 address (each host's underlay address is its source address towards it).
    vni_base : int
        VNI of the first cross-host link (:class:`~emulator.cluster.part.HostPart`).
    say : callable, optional
        Called with a line of progress (the clocks once measured).
    compute : dict, optional
        The compute services' settings (:meth:`HostAgent.build`); None: the timeline has no compute node.

    Raises
    ------
    ConfigError
        A host runs other versions, or its clock is off (one line naming the host).
    ApplyError
        An agent's build failed (the message names the host; the agents that built are stopped).
    """
    import ray

    from .raynode import resource

    t0 = time.perf_counter()
    placement = place(timeline, n_hosts, strategy)
    actor: Any = ray.remote(num_cpus=0)(HostAgent)
    agents = [actor.options(resources={resource(h): 1}).remote(h) for h in range(n_hosts)]
    underlay = tuple(ray.get([a.underlay_address.remote(head_addr) for a in agents], timeout=BUILD_TIMEOUT_S))
    check_versions(_versions(), list(ray.get([a.versions.remote() for a in agents], timeout=60)))
    clocks = measure_clocks(agents)
    if say is not None:
        say("  clocks against the driver's (ms): " + ", ".join(
            f"host {h} {c.offset_ms:+.3f} +- {c.bound_ms:.3f}" for h, c in enumerate(clocks)))
    check_clocks(clocks, max_clock_offset_ms)
    t1 = time.perf_counter()
    cluster = Cluster(agents, placement, underlay, clocks=clocks)
    tl_ref = ray.put(timeline)
    calls = [a.build.remote(tl_ref, placement.host_of, underlay, run_id, protocol, shaper, seed, vni_base,
                            queue_packets, True, compute) for a in agents]
    builds: list[dict[str, Any]] = []
    failure = None
    for h, c in enumerate(calls):
        try:
            builds.append(ray.get(c, timeout=BUILD_TIMEOUT_S))
        except Exception as e:  # noqa: BLE001 - a Ray task error carries the agent's exception as text
            failure = failure or f"host {h}: {str(e).strip().splitlines()[-1]}"
            builds.append({"host": h, "error": str(e)})
    if failure is not None:
        cluster.stop()
        raise ApplyError(f"the build failed on {failure}", operation="cluster build")
    cluster.builds = builds
    cluster.timings_s = {"agents": t1 - t0, "build": time.perf_counter() - t1}
    return cluster


def main(argv: list[str]) -> int:
    """Driver for tests and benches: ``python -m emulator.cluster.agent HEAD_ADDR:PORT TIMELINE.npz N_HOSTS
    RUN_ID [STRATEGY [PROTOCOL]]``. Builds and prints one JSON line (placement, underlay, builds); then for each line
    ``step K`` on standard input every agent applies step K and one JSON line gives their counts (or
    ``{"error": ...}`` and exit status 1 when an agent is gone); for the line ``play`` every host applies the
    timeline's steps on its own clock (:meth:`Cluster.play`): one line ``{"start_ns", "step_s", "last"}`` once
    every agent has the start, then ``{"played": ...}`` (each host's steps) or ``{"error": ...}`` and exit
    status 1; for the line ``underlay`` every agent measures the underlay again (:meth:`HostAgent.
    remeasure_underlay`; one line ``{"underlay": [rows of each host]}``); any other line (or end of file) stops
    every agent and prints one JSON line of what each left.
    Ray may print lines of its own to standard output (``(raylet) ...``): the JSON lines are those that start
    with ``{``."""
    import ray

    head, path, n_hosts, run_id = argv[0], argv[1], int(argv[2]), argv[3]
    strategy = argv[4] if len(argv) > 4 else "plane"
    protocol = argv[5] if len(argv) > 5 else "shortest-delay"
    tl = Timeline.load(path)
    ray.init(address=head, logging_level=logging.WARNING, log_to_driver=False)
    try:
        cluster = start(head.rsplit(":", 1)[0], tl, n_hosts, run_id, strategy, protocol)
        print(json.dumps({"host_of": cluster.placement.host_of.tolist(), "underlay": list(cluster.underlay),
                          "builds": cluster.builds, "timings_s": cluster.timings_s,
                          "clocks": [{"offset_ms": c.offset_ms, "bound_ms": c.bound_ms} for c in cluster.clocks]}),
              flush=True)
        for line in sys.stdin:
            words = line.split()
            if words == ["underlay"]:  # every agent measures the underlay again (applied from the next step)
                print(json.dumps({"underlay": ray.get([a.remeasure_underlay.remote() for a in cluster.agents],
                                                      timeout=BUILD_TIMEOUT_S)}), flush=True)
                continue
            if words == ["play"]:
                try:
                    played = cluster.play(tl.n_steps - 1, on_start=lambda t: print(json.dumps(
                        {"start_ns": t, "step_s": tl.step_s, "last": tl.n_steps - 1}), flush=True))
                except ApplyError as e:
                    print(json.dumps({"error": str(e)}), flush=True)
                    return 1
                print(json.dumps({"played": played}), flush=True)
                continue
            if len(words) != 2 or words[0] != "step" or not words[1].isdigit():
                break
            try:
                stats = cluster.apply_step(int(words[1]))
            except ApplyError as e:
                print(json.dumps({"error": str(e)}), flush=True)
                return 1
            print(json.dumps({"step": int(words[1]), "stats": stats}), flush=True)
        print(json.dumps({"stopped": cluster.stop()}), flush=True)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
