"""``satnetem run`` and ``satnetem cli``: build the live network, play the timeline, probe, tear down."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from topologies.errors import ConfigError, SatnetemError, one_line
from topologies.scenario import (
    DEFAULT_SCENARIO_TOML,
    Scenario,
    TrafficSpec,
    check_traffic_endpoints,
    default_scenario,
    load_scenario,
    scenario_from_table,
)
from topologies.timeline import Timeline

from .clock import Playback, StepRecord, wall_offset_s
from .kernel.memory import (
    meminfo_kb,
    net_namespaces,
    pss_kb,
    release_dead_namespaces,
    settle_net_namespaces,
    wait_net_namespaces,
)

log = logging.getLogger(__name__)

#: From this many nodes on, a run waits (at most KERNEL_WAIT_S) after its teardown until the kernel has freed
#: its namespaces, and says how long that took: a run started before competes with the kernel's cleanup.
KERNEL_WAIT_MIN_NODES = 1000
KERNEL_WAIT_S = 60.0


def _say(msg: str) -> None:
    print(msg, flush=True)


def load_inputs(args: argparse.Namespace) -> tuple[Scenario, Timeline]:
    """The scenario and its timeline: planned now, or replayed from ``--timeline``."""
    if args.timeline:
        if getattr(args, "include_transient", False):
            raise ConfigError("--include-transient applies when planning; a --timeline is already planned "
                              "(plan it with --include-transient)", key="include_transient")
        tl = Timeline.load(args.timeline)
        if args.scenario:
            sc = load_scenario(args.scenario)
        elif tl.scenario:
            sc = scenario_from_table(tl.scenario, f"{args.timeline} (embedded scenario)")
        else:
            sc = default_scenario()
        return sc, tl
    from topologies.plan import plan_scenario

    sc = load_scenario(args.scenario) if args.scenario else default_scenario()
    if getattr(args, "include_transient", False):
        from .cli import with_transient

        sc = with_transient(sc)
    _say(f"planning '{sc.name}' ({sc.time.n_steps} steps of {sc.time.step_s:g} s) ...")
    t = time.monotonic()
    tl = plan_scenario(sc)
    _say(f"  planned in {time.monotonic() - t:.1f} s: {len(tl.nodes_of('sat'))} satellites, "
         f"{len(tl.nodes_of('gateway'))} gateways, {tl.n_links} link slots")
    return sc, tl


def check_probes(sc: Scenario, tl: Timeline) -> list[TrafficSpec]:
    """The scenario's probes, or default ones: ping between ground hosts and to a compute node."""
    probes = list(sc.traffic)
    check_traffic_endpoints(sc, {n.name for n in tl.nodes}, {n.name: n.kind for n in tl.nodes})
    if not probes:
        hosts = [tl.nodes[i].name for i in tl.nodes_of("host")]
        dcs = [tl.nodes[i].name for i in tl.nodes_of("compute")]
        if len(hosts) >= 2:
            probes.append(TrafficSpec(src=hosts[0], dst=hosts[1]))
        if hosts and dcs:
            probes.append(TrafficSpec(src=hosts[0], dst=dcs[0]))
    return probes


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "kernel": platform.release()}
    for pkg in ("satnetem", "numpy", "sgp4", "pyroute2", "networkx", "scipy", "mininet"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def results_dir(args: argparse.Namespace, sc: Scenario) -> Path:
    if args.results:
        d = Path(args.results)
    else:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        d = Path("results") / f"{stamp}-{sc.name}"
    d.mkdir(parents=True, exist_ok=True)
    return d


class _Signals:
    """SIGINT, SIGTERM and SIGHUP while the run builds or plays end it like Ctrl-C: a KeyboardInterrupt,
    through the teardown in ``finally``. From the end of :meth:`raising` until :meth:`restore` (the
    teardown) they are noted and ignored: a second Ctrl-C or a service manager's SIGTERM there would cut
    the teardown short and leave processes and namespaces behind (the teardown is bounded: it kills)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.holding = False
        self.held: list[int] = []
        self._old = {s: signal.getsignal(s) for s in self.SIGNALS}

    def _handler(self, signum: int, frame: Any) -> None:
        if not self.holding:
            raise KeyboardInterrupt(f"signal {signum}")
        if not self.held:
            _say(f"signal {signum} during the teardown: finishing it first")
        self.held.append(signum)

    @contextmanager
    def raising(self) -> Iterator[None]:
        for s in self.SIGNALS:
            signal.signal(s, self._handler)
        try:
            yield
        finally:
            self.holding = True  # no moment with the default handlers between here and the teardown

    def hold(self) -> None:
        self.holding = True

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise SatnetemError("this command builds network namespaces and needs root: run it with sudo")


def _stats(x: np.ndarray) -> dict[str, float | None]:
    x = x[np.isfinite(x)]
    if not len(x):
        return {"p50": None, "p95": None, "p99": None, "min": None, "max": None}
    return {"p50": float(np.percentile(x, 50)), "p95": float(np.percentile(x, 95)),
            "p99": float(np.percentile(x, 99)), "min": float(x.min()), "max": float(x.max())}


def address_owners(emu: Any, tl: Timeline, steps: int) -> dict[str, dict[str, str]]:
    """{address: {"*": node}} for every interface address, or {address: {step: node}} for the satellite end
    of a gateway antenna, which moves between satellites: maps path-probe hops back to nodes."""
    from .addressing import ip_str

    a = emu.addr
    names = [n.name for n in tl.nodes]
    out: dict[str, dict[str, str]] = {}
    for i in range(len(names)):
        if a.is_router[i]:
            out[ip_str(a.loopback[i])] = {"*": names[i]}
    for link in range(tl.n_links):
        near, far = [a.addr_a[link]], [a.addr_b[link]]
        if a.has_spare[link]:  # an antenna's second veth pair: the same ends while it carries the slot
            near.append(a.spare_addr_a[link])
            far.append(a.spare_addr_b[link])
        peers = tl.peer[link, :steps]
        for addr_a, addr_b in zip(near, far):
            out[ip_str(addr_a)] = {"*": names[int(tl.link_a[link])]}
            if (peers == peers[0]).all() and peers[0] >= 0:
                out[ip_str(addr_b)] = {"*": names[int(peers[0])]}
            else:
                out[ip_str(addr_b)] = {str(k): names[int(p)] for k, p in enumerate(peers) if p >= 0}
    return out


def nearest_schedule(tl: Timeline, protocol: Any, src: str, computes: list[str], t0_unix: float,
                     speed: float, steps: int) -> list[dict[str, Any]]:
    """For the 'nearest' request policy: from each step on, the compute node with the lowest predicted
    RTT from ``src``."""
    from routing.predict import predict

    si = tl.node_index(src)
    pred = predict(tl, protocol, [(si, tl.node_index(c)) for c in computes], steps)
    rtt = np.stack([pred[(si, tl.node_index(c))].rtt_ms for c in computes])
    rtt = np.where(np.isfinite(rtt), rtt, np.inf)
    best = np.argmin(rtt, axis=0)
    out, last = [], None
    for k in range(steps):
        if best[k] != last:
            out.append({"t_unix_s": t0_unix + k * tl.step_s / speed, "target": computes[int(best[k])]})
            last = best[k]
    return out


def _best_policy(hosts: Any, tl: Timeline, plan: Any, f: TrafficSpec, i: int, t0_unix: float, speed: float,
                 out: Path) -> tuple[list[dict[str, Any]], Any]:
    """For the 'best' request policy: the client's first schedule (the first serving node), and the
    emulator.migration.Migrator that moves its state and its target at each planned change (``plan``: the
    flow's emulator.migration.BestPlan). ``hosts(d)`` gives where the transfers run, ``d`` the flow's folder
    (emulator.migration.LocalMoves on one host)."""
    from .flows import safe_label
    from .migration import MIGRATE_PORT_BASE, Migrator, initial_target, plan_migrations

    state_bytes = int(round(f.migrate_state_mb * 1e6))
    moves = plan_migrations(tl, plan, state_bytes)
    d = out / "flows" / safe_label(f.label)
    d.mkdir(parents=True, exist_ok=True)
    (d / "best_plan.json").write_text(json.dumps({
        "computes": list(plan.computes), "best": plan.best.tolist(),
        "rtt_ms": [None if not np.isfinite(x) else round(float(x), 3) for x in plan.rtt_ms],
        "migrations": [m.__dict__ for m in moves]}))
    for m in moves:
        _say(f"  {f.label}: migration {m.src} -> {m.dst} planned, {state_bytes / 1e6:g} MB from step "
             f"{m.start_step}, users switch by step {m.switch_step}")
    sched = [{"t_unix_s": t0_unix, "target": initial_target(plan)}]
    return sched, Migrator(hosts(d), moves, state_bytes, t0_unix, tl.step_s / speed, d, MIGRATE_PORT_BASE + i)


class Tally:
    """Counts of a pattern in growing files, read incrementally: each call reads only what was appended since
    the last (up to its last complete line), so the cost of a progress line stays that of the last interval's
    records however long the run has been going (re-reading whole files every 10 s, a 2-hour run read ~17 MB
    each time by its end)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[Path, bytes], tuple[int, int]] = {}  # (file, pattern) -> (offset, count)

    def count(self, path: Path, pattern: bytes = b"\n") -> int:
        """Occurrences of ``pattern`` in the complete lines of ``path`` so far (0 for a file not there yet)."""
        offset, n = self._seen.get((path, pattern), (0, 0))
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
        except OSError:
            return n
        end = chunk.rfind(b"\n") + 1  # a line still being written is counted once it is complete
        n += chunk[:end].count(pattern)
        self._seen[(path, pattern)] = (offset + end, n)
        return n


def flow_progress(flows: list[Any], out: Path, tally: Tally | None = None) -> str:
    """'received/sent' of each running flow, read from its files (``tally``: kept between calls, so that each
    reads only what was added since the last)."""
    from .flows import safe_label

    t = tally or Tally()
    parts = []
    for fl in flows:
        r = fl.record
        d = out / "flows" / safe_label(r.label)
        sent = int(max(0.0, time.time() - r.start_unix_s) * r.rate_pps)
        if r.kind == "ping":
            parts.append(f"{r.label} {t.count(d / 'ping.txt', b'bytes from')}/{sent}")
        elif r.kind == "udp-probe":
            parts.append(f"{r.label} {max(0, t.count(d / 'recv.csv') - 1)}/{max(0, t.count(d / 'sent.csv') - 1)}")
        elif r.kind == "request":
            parts.append(f"{r.label} {max(0, t.count(d / 'requests.csv') - 1)} done")
        elif r.kind == "allreduce":  # rounds every node has finished
            done = min((t.count(d / f) - 1 for k, f in r.files.items() if k != "allreduce"), default=0)
            parts.append(f"{r.label} {max(0, done)} rounds")
    return "; ".join(parts)


def _no_world_write() -> None:
    """Files and sockets this run and its children create are never group- or world-writable, whatever
    the caller's umask: the results, the state file under /run/satnetem and the routing daemons' control
    sockets are root's, and whoever could write them could alter a report or command a daemon."""
    os.umask(os.umask(0o022) | 0o022)


def _start_compute(emu: Any, tl: Timeline, flows: list[TrafficSpec], summary: dict[str, Any],
                   throttle_share: float | None) -> tuple[Any, Any]:
    """Start every compute node's service with its capacity (emulator.traffic.compute), its whereami.json
    at step 0 (and, when the timeline has power states, each step's state enforced: a throttled node at
    ``throttle_share`` of its CPU share, a stopped one refusing work); say how the capacity is enforced and
    what the services cost in memory."""
    from .traffic.compute import ComputeServices, WhereamiWriter, node_services, request_work_ms, services_cost

    svc = ComputeServices(emu.run_id, work_ms=request_work_ms(flows))
    _say(f"  compute capacity: {svc.describe()}")
    nodes = node_services(emu)
    t = time.monotonic()
    try:
        svc.start(nodes)
        writer = WhereamiWriter(svc, tl, throttle_share)
    except BaseException:
        svc.stop()
        raise
    writer.post(0)
    c = summary["compute_services"] = services_cost(svc, time.monotonic() - t)
    _say(f"  {len(nodes)} compute services (uid {svc.uid}) started in {c['start_s']} s: "
         f"RSS {c['rss_kb_total'] / 1024:.1f} MB in total ({c['rss_kb_median']} kB each; shared pages counted once: "
         f"PSS {c['pss_kb_total'] / 1024:.1f} MB)")
    return svc, writer


def run(args: argparse.Namespace) -> int:
    """Build, play, send the traffic, write the results folder as it goes, tear down, report."""
    _require_root()
    _no_world_write()
    sc, tl = load_inputs(args)
    from .cli import check_scenario

    check_scenario(sc, args.shaper)
    flows_wanted = check_probes(sc, tl)
    speed = args.speed if args.speed is not None else sc.emulation.speed
    if not 0.01 <= speed <= 100:
        raise ConfigError(f"--speed must be in [0.01, 100], got {speed}")
    last = tl.n_steps - 1
    if args.duration is not None:
        if args.duration <= 0:
            raise ConfigError(f"--duration must be > 0, got {args.duration}")
        last = min(last, max(1, int(round(args.duration / tl.step_s))) - 1)
    play_s = (last + 1) * tl.step_s / speed
    protocol_name = getattr(args, "protocol", None) or sc.routing.protocol

    from routing.base import scenario_protocol

    from .flows import FlowStarter
    from .network import PHASE_COLUMNS, Emulation, phase_cells, tcp_nodes
    from .shaping import make_shaper

    protocol = scenario_protocol(sc, protocol_name)  # with its [routing.<name>] options
    from .cluster.run import cluster_config

    cluster = cluster_config(args, sc)  # --cluster or [cluster]: checked before the folder is made
    out = results_dir(args, sc)
    if sc.source == "<built-in>":
        (out / "scenario.toml").write_text(DEFAULT_SCENARIO_TOML)
    elif not args.timeline or args.scenario:
        shutil.copyfile(sc.source, out / "scenario.toml")
    (out / "scenario.json").write_text(json.dumps(sc.raw, indent=2, default=str))
    tl.save(out / "timeline.npz")
    from topologies.power import power_events

    # the compute nodes' planned power states (throttle, stop, back), for the run's reader and report
    (out / "power_events.json").write_text(json.dumps(power_events(tl), indent=1))
    (out / "versions.json").write_text(json.dumps(versions(), indent=2))
    if cluster is not None:
        from .cluster.run import run_cluster

        return run_cluster(cluster, sc, tl, protocol=protocol.name, shaper=args.shaper or sc.emulation.shaper,
                           flows_wanted=flows_wanted, last=last, speed=speed, out=out,
                           run_id=getattr(args, "run_id", None))

    shaper, why = make_shaper(args.shaper or sc.emulation.shaper, sc.seed,
                              sc.emulation.keep_cpus_awake, sc.emulation.carry_lateness)
    _say(f"shaper: {why}")
    summary: dict[str, Any] = {"scenario": sc.name, "seed": sc.seed, "shaper": shaper.name,
                               "shaper_reason": why, "protocol": protocol.name, "speed": speed,
                               "steps_planned": last + 1, "step_s": tl.step_s, "complete": False}
    steps_csv = open(out / "steps.csv", "w", newline="")
    steps_w = csv.writer(steps_csv)
    steps_w.writerow(["step", "due_s", "late_ms", "apply_ms", "links_up", "links_down", "handovers",
                      "param_changes", "routes_changed", "routes_ms", "moves_in_step", "ahead_ms", "routes_ahead",
                      "route_table", *(c for c, _ in PHASE_COLUMNS)])
    steps_csv.flush()
    emu = None
    starter: Any = None
    compute_svc: Any = None  # the compute nodes' services (emulator.traffic.compute)
    whereami: Any = None
    loadlog: Any = None
    monitor: Any = None
    mem_before: dict[str, int] = {}  # /proc/meminfo before the build, kB
    ns_before: int | None = None  # the kernel's network namespaces before the build
    playback: Playback | None = None
    watchdog: Any = None
    link_watch: Any = None
    timers: list[threading.Timer] = []
    migrators: list[Any] = []  # the 'best' request flows' state transfers (emulator.migration)
    signals = _Signals()
    try:
        with signals.raising():
            emu = Emulation(tl, shaper, protocol, delay_tolerance_ms=sc.emulation.delay_tolerance_ms,
                            run_id=getattr(args, "run_id", None))
            summary["run_id"] = emu.run_id
            emu.queue_packets = dict(sc.emulation.queue_packets)
            emu.tcp_nodes = tcp_nodes(sc.traffic)
            emu.route_switch = sc.emulation.route_switch
            emu.keep_cpus_awake = sc.emulation.keep_cpus_awake
            if hasattr(emu, "log_dir"):
                emu.log_dir = out / "daemons"
            # at scale, the baseline is taken once earlier runs' dead namespaces are freed (they would go
            # during the build anyway, and the count after the teardown would meet a baseline too high)
            big = len(tl.nodes) >= KERNEL_WAIT_MIN_NODES
            ns_before = settle_net_namespaces() if big else net_namespaces()
            mem_before = meminfo_kb("MemAvailable", "Slab")
            t = time.monotonic()
            _say(f"building {len(tl.nodes)} nodes and {tl.n_links} links ...")
            emu.build()
            summary["build_s"] = round(time.monotonic() - t, 2)
            if emu.cpu_hold is not None:
                summary["cpu_idle_held"] = emu.cpu_hold.held or emu.cpu_hold.why_not
            from .watchdog import link_deletions

            # before the clock starts: ids for the namespaces take ~0.1 ms each (two netlink round trips)
            link_check, link_watch = link_deletions(emu, [n.name for n in tl.nodes])
            (out / "addresses.json").write_text(json.dumps(address_owners(emu, tl, last + 1)))
            _say(f"  built in {summary['build_s']} s; playing {last + 1} steps ({play_s:.0f} s wall clock)")
            counts = getattr(emu, "build_counts", {})
            if counts:  # counted from /proc after the build: constant whatever the constellation's size
                summary["build_counts"] = counts
                _say(f"  the build added {counts['processes_added']} processes and {counts['ptys_added']} ptys "
                     f"for {counts['namespaces']} namespaces (held by process {counts['holder_pid']})")
            starter = FlowStarter(emu, out, speed)
            starter.base_dir = sc.base_dir
            if any(f.kind == "matrix" for f in flows_wanted):  # background load: bytes per link per step
                from .linkload import LinkCounters, LinkLoadLog

                loadlog = LinkLoadLog(LinkCounters(emu), out / "linkload.csv")
            computes = [tl.nodes[i].name for i in tl.nodes_of("compute")]
            if computes:
                compute_svc, whereami = _start_compute(emu, tl, flows_wanted, summary,
                                                       sc.power_config().throttle_share)
                starter.groups = compute_svc.groups  # the all-reduce's ranks run inside their nodes' groups

            tally = Tally()  # the progress lines' counts, read incrementally

            def on_step(rec: StepRecord) -> None:
                s = rec.stats
                steps_w.writerow([rec.step, f"{rec.due_s:.3f}", f"{rec.late_ms:.2f}", f"{rec.apply_ms:.2f}",
                                  s.get("links_up", 0), s.get("links_down", 0), s.get("handovers", 0),
                                  s.get("param_changes", 0), s.get("routes_changed", 0),
                                  *phase_cells(s.get("timings_ms"), ("routes",)),
                                  s.get("moves_in_step", 0), f"{rec.ahead_ms:.2f}", s.get("routes_ahead", 0),
                                  s.get("route_table", 0), *phase_cells(s.get("timings_ms"))])
                steps_csv.flush()
                if loadlog is not None:
                    loadlog.sample(rec.step)
                if whereami is not None:
                    whereami.post(rec.step)
                if rec.step % max(1, int(10 / tl.step_s)) == 0:
                    _say(f"  t={rec.step * tl.step_s:7.1f} s  step {rec.step}/{last}  late {rec.late_ms:6.1f} ms"
                         f"  {flow_progress(starter.flows, out, tally)}")

            # keep_records=False: each step's record is in steps.csv (on_step), not held for the whole run
            playback = Playback(tl.step_s, 0, last, emu.apply_step, speed, on_step, emu.prepare_ahead,
                                settle=emu.settle, keep_records=False,
                                rt_priority=sc.emulation.clock_priority, hold_last=True)
            from .validity import Bounds, HostMonitor

            bounds = Bounds.of(sc.emulation)
            t0 = time.monotonic()
            offset_s = wall_offset_s()  # the wall clock then: samples are stamped by it (report.load_run)
            t0_unix = t0 + offset_s
            monitor = HostMonitor(out / "monitor.csv", t0, shaper)
            monitor.start()
            (out / "run.json").write_text(json.dumps({"run_id": emu.run_id, "t0_unix": t0_unix, "speed": speed,
                                                      "wall_offset_s": offset_s,
                                                      "step_s": tl.step_s,
                                                      "protocol": protocol.name, "shaper": shaper.name,
                                                      "steps_planned": last + 1, "validity": bounds.as_dict(),
                                                      "psi": monitor.has_psi}))
            best_plans: dict[str, Any] | None = None
            for i, f in enumerate(flows_wanted):
                dur = f.duration_s / speed if f.duration_s is not None else play_s - f.start_s / speed
                if dur <= 0:
                    continue
                sched = (nearest_schedule(tl, protocol, f.src, computes, t0_unix, speed, last + 1)
                         if f.kind == "request" and f.policy == "nearest" else None)
                moves = None
                if f.kind == "request" and f.policy == "best":
                    if best_plans is None:  # every flow's load, then each best flow's choice
                        from .migration import flow_loads

                        best_plans = flow_loads(tl, protocol, flows_wanted, computes, last + 1)[1]
                    from .migration import LocalMoves

                    sched, moves = _best_policy(lambda d: LocalMoves(emu, d, d / "schedule.json"), tl,
                                                best_plans[f.label], f, i, t0_unix, speed, out)

                def start(i: int = i, f: TrafficSpec = f, dur: float = dur, sched: Any = sched,
                          moves: Any = moves) -> None:
                    if f.start_s > 0:  # on a timer's thread: an error here would end only the thread
                        try:
                            starter.start(i, f, max(1.0, dur), sched)
                        except (SatnetemError, OSError) as e:
                            why = str(e) if isinstance(e, SatnetemError) else f"{type(e).__name__}: {e}"
                            _say(f"traffic: flow {f.label} could not start at {f.start_s:g} s: {one_line(why)}")
                            return
                    else:
                        starter.start(i, f, max(1.0, dur), sched)
                    if moves is not None:
                        migrators.append(moves)
                        moves.start()

                if f.start_s > 0:
                    timers.append(threading.Timer(f.start_s / speed, start))
                    timers[-1].daemon = True
                    timers[-1].start()
                else:
                    start()
            from .watchdog import (
                Watchdog,
                holder_alive,
                results_space,
                routing_daemons_alive,
                shards_alive,
                traffic_alive,
            )

            def on_fault(line: str, stop_clock: Any = playback.stop) -> None:
                _say(f"run stopped: {line}")
                stop_clock()

            watchdog = Watchdog([shards_alive(shaper), holder_alive(getattr(emu, "holder", None)), link_check,
                                 routing_daemons_alive(protocol), traffic_alive(starter, _say), results_space(out)],
                                on_fault)
            watchdog.start()
            playback.run(t0)
            watchdog.stop()
            for tm in timers:
                tm.cancel()
            for mg in migrators:
                mg.stop()
            if watchdog.fault is None:
                for fl in starter.flows:
                    fl.wait(timeout_s=5)
                summary["complete"] = True
    except KeyboardInterrupt:
        _say("interrupted: stopping traffic and tearing down")
    except (SatnetemError, OSError) as e:
        if watchdog is None:
            raise  # before the clock started: the command's error, as for a bad scenario
        watchdog.stop()
        if watchdog.fault is None:  # a step failed (a write to a dead shard) before the watchdog looked
            watchdog.fault = watchdog.check_now() or one_line(str(e) if isinstance(e, SatnetemError) else
                                                              f"{type(e).__name__}: {e}")
            _say(f"run stopped: {watchdog.fault}")
    finally:
        signals.hold()
        if watchdog is not None:
            watchdog.stop()
            if watchdog.fault is not None:
                summary["fault"] = watchdog.fault
        if link_watch is not None:  # before the teardown deletes every interface
            link_watch.close()
        for tm in timers:
            tm.cancel()
        for mg in migrators:  # a transfer under way when the run was cut short (no-op after a full run)
            mg.stop()
        if starter is not None:
            starter.stop_all()
        if whereami is not None:
            whereami.close()
        if compute_svc is not None:
            left = compute_svc.stop()
            if left:
                summary.setdefault("compute_services", {})["cgroups_left"] = left
        if monitor is not None:
            monitor.stop()
            low = monitor.mem_low
            if "MemAvailable" in low and "MemAvailable" in mem_before:
                summary["memory"] = {
                    # from before the build to the lowest MemAvailable while playing; Slab at that moment
                    "mem_available_fall_gb": round((mem_before["MemAvailable"] - low["MemAvailable"]) / 2**20, 2),
                    "slab_growth_gb": round((low.get("Slab", 0) - mem_before.get("Slab", 0)) / 2**20, 2),
                    "pss_gb": round(pss_kb() / 2**20, 2)}  # now, before the teardown: the run's processes
        if loadlog is not None:
            try:  # the last step's bytes; a failure here must not stop the teardown
                loadlog.sample(last + 1)
            except SatnetemError as e:
                log.warning("last link counter sample failed: %s", e)
            loadlog.close()
        try:
            steps_csv.close()
        except OSError as e:  # a full disk: the watchdog said so (the rows before are on disk)
            log.info("steps.csv: %s", e)
        try:  # the backend's own account (the userspace daemon's release times), for reading delay errors
            if counters := shaper.stats():
                counters.pop("late_hist", None)  # 2,201 bins: the quantiles say it
                summary["shaper_stats"] = counters
        except Exception as e:  # noqa: BLE001 - a dead daemon must not stop the teardown
            if summary.get("fault"):  # said already, in the run's one line
                log.info("shaper statistics unavailable: %s", e)
            else:
                log.warning("shaper statistics unavailable: %s", e)
        if emu is not None and callable(stats := getattr(protocol, "stats", None)):
            summary["routing_daemons"] = stats()  # what a daemon protocol told its daemons (ospf: pushes)
        t = time.monotonic()
        if emu is not None:
            emu.stop()
        shaper.close()
        summary["teardown_s"] = round(time.monotonic() - t, 2)
        if ns_before is not None and emu is not None and len(tl.nodes) >= KERNEL_WAIT_MIN_NODES:
            # the kernel frees namespaces after the last reference goes (on the development kernel, only
            # once a new one is made: emulator.kernel.memory): a run started before competes with that.
            # Counted machine-wide, so another run's namespaces count too.
            waited, left = wait_net_namespaces(ns_before, KERNEL_WAIT_S)
            summary["kernel_cleanup"] = {"seconds": round(waited, 1), "namespaces_left": left}
        elif emu is not None:
            release_dead_namespaces()
        if playback is not None:
            summary["lateness"] = playback.lateness_summary()
        try:
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
        except OSError as e:  # a full disk: what the run measured is on disk; the summary can be rebuilt
            _say(f"summary.json not written ({e.strerror}): 'satnetem report {out}' rebuilds it from the folder "
                 f"once there is room")
        signals.restore()
    return finish(out, summary)


def finish(out: Path, summary: dict[str, Any]) -> int:
    """The end of a run (one host or a cluster): the report and plots from the folder (the summary as it is if
    they fail), the summary printed, and the exit status: 0 complete, 1 a fault, 130 interrupted."""
    try:
        from .report import report

        summary = report(out)
    except Exception as e:  # noqa: BLE001 - the measurements are on disk; plots can be redone with 'report'
        log.warning("plots failed (%s); 'satnetem report %s' retries", e, out)
    print_summary(summary, out)
    return 0 if summary.get("complete") else 1 if summary.get("fault") else 130


def _late(us: float | None) -> str:
    """A lateness quantile; None: beyond the daemon's histogram (10 ms), which a run should hear of."""
    return "> 10000" if us is None else f"{us:.1f}"


def _fmt(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def print_summary(s: dict[str, Any], out: Path) -> None:
    _say("")
    state = "complete" if s.get("complete") else f"STOPPED ({s['fault']})" if s.get("fault") else "INTERRUPTED"
    _say(f"satnetem run '{s.get('scenario', '?')}': {state}, "
         f"shaper {s.get('shaper')}, routing {s.get('protocol')}, speed {s.get('speed', 1):g}")
    if "build_s" in s:
        kc = s.get("kernel_cleanup") or {}
        after = ("" if not kc else f"; the kernel's namespaces back to their count before the build "
                 f"{kc['seconds']} s after" if not kc.get("namespaces_left") else
                 f"; {kc['namespaces_left']} namespaces more than before the build still in the kernel "
                 f"{kc['seconds']} s after")
        _say(f"  bring-up {s['build_s']} s, teardown {s.get('teardown_s', '-')} s{after}")
    mem = s.get("memory")
    if mem:
        _say(f"  memory: MemAvailable {mem['mem_available_fall_gb']} GB lower at its lowest while playing than "
             f"before the build (kernel Slab +{mem['slab_growth_gb']} GB); the run's processes PSS "
             f"{mem['pss_gb']} GB")
    late = s.get("lateness") or {}
    if late.get("steps"):
        _say(f"  steps applied {late['steps']}: late median {_fmt(late['late_ms_median'])} ms, "
             f"p95 {_fmt(late['late_ms_p95'])} ms; apply median {_fmt(late['apply_ms_median'])} ms")
    sh = s.get("shaper_stats")
    if sh and sh.get("released"):
        _say(f"  delay daemon: {sh['released']} packets held and released, {sh.get('dropped', 0)} dropped; "
             f"release lateness p50 {_late(sh.get('late_p50_us'))} us, p99 {_late(sh.get('late_p99_us'))} us, "
             f"max {_fmt(sh.get('late_max_us'), 1)} us")
        rt = sh.get("rt_priority")
        _say(f"  delay daemon: {sh.get('shards', 1)} shard(s), "
             f"{'real-time priority SCHED_FIFO ' + str(rt) if rt else 'normal scheduling'}"
             f"{', memory locked' if sh.get('memory_locked') else ''}; CPU s per shard "
             f"{', '.join(f'{x:.1f}' for x in sh.get('cpu_s_per_shard') or []) or '-'}"
             + (f"; {sh['standby_threads']} standby threads released {sh.get('standby_released', 0)} packets"
                if sh.get("standby_threads") else ""))
    held = s.get("cpu_idle_held")
    if held is not None:
        _say("  CPU idle states: " + ("held at 0 us exit latency (/dev/cpu_dma_latency) while the run lasted"
                                      if held is True else f"not held ({held})"))
    rd = s.get("routing_daemons")
    if rd and "reconfigurations" in rd:
        _say(f"  routing daemons: {rd['reconfigurations']} reconfigurations ({rd.get('cost_reconfigurations', 0)} "
             f"for cost: tolerance {rd.get('cost_tolerance_pct', 0):g} %, a router at most once per "
             f"{rd.get('cost_push_interval_s', 0):g} s); step work p50 {_fmt(rd.get('update_ms_p50'))} ms, "
             f"max {_fmt(rd.get('update_ms_max'))} ms; daemons' CPU {_fmt(rd.get('daemons_cpu_s'), 1)} s")
    for f in s.get("flows", []):
        if f["kind"] in ("ping", "udp-probe"):
            m, e = f["measured_ms"], f["error_ms"]
            what = "RTT" if f["metric"] == "rtt" else "one-way"
            _say(f"  {f['flow']}: {f['sent']} sent, {f['lost']} lost; {what} p50/p95/p99 {_fmt(m['p50'])}/"
                 f"{_fmt(m['p95'])}/{_fmt(m['p99'])} ms; measured - predicted p50 {_fmt(e['p50'])} ms (all)")
            v = f.get("valid")
            if v is not None:
                vm, ve = v["measured_ms"], v["error_ms"]
                _say(f"    valid: {v['samples']} of {f['sent']} ({_fmt(v['pct'], 1)}%), {v['lost']} lost; {what} "
                     f"p50/p95/p99 {_fmt(vm['p50'])}/{_fmt(vm['p95'])}/{_fmt(vm['p99'])} ms; measured - "
                     f"predicted p50 {_fmt(ve['p50'])} ms")
        elif f["kind"].startswith("iperf3"):
            extra = ""
            if f.get("retransmits") is not None:
                extra += f", {f.get('retransmits')} retransmits"
            if f["kind"] == "iperf3-udp":
                extra += f", jitter {_fmt(f.get('jitter_ms'))} ms, lost {_fmt(f.get('lost_pct'), 1)}%"
            _say(f"  {f['flow']}: {_fmt(f.get('received_mbps'), 1)} Mbit/s received{extra}")
        elif f["kind"] == "request":
            tot, net, svc = ((f.get(k) or {}) for k in ("total_ms", "network_ms", "service_ms"))
            _say(f"  {f['flow']}: {f.get('count', 0)} requests, {f.get('failures', 0)} failed; total p50 "
                 f"{_fmt(tot.get('p50'))} ms = network {_fmt(net.get('p50'))} + service {_fmt(svc.get('p50'))}")
            sp = f.get("latency_split")
            if sp:
                _say(f"    p50 split: network (predicted RTT) {_fmt(sp['network_ms']['p50'])} ms, queueing "
                     f"{_fmt(sp['queueing_ms']['p50'])} ms, service {_fmt(sp['service_ms']['p50'])} ms")
            for m in f.get("migrations", []):
                _say(f"    migration {m['from']} -> {m['to']}: {(m.get('bytes') or 0) / 1e6:g} MB in "
                     f"{_fmt(m.get('duration_s'), 3)} s ({'ok' if m.get('ok') else 'FAILED'})"
                     f"{'; users moved before it ended' if m.get('switched_before_state') else ''}")
        elif f["kind"] == "allreduce":
            _say(f"  {f['flow']}: ring all-reduce of {f.get('size_mb', 0):g} MB among {len(f.get('nodes', []))} "
                 f"nodes, {f.get('rounds', 0)} of {f.get('rounds_planned', 0)} rounds; round time p50 "
                 f"{_fmt(f.get('round_s_p50'), 3)} s, p95 {_fmt(f.get('round_s_p95'), 3)} s"
                 f"{'' if f.get('correct') else ' (result WRONG or no round finished)'}")
        elif f["kind"] == "path":
            _say(f"  {f['flow']}: {f.get('rounds', 0)} path rounds; {f.get('matched', '-')} of the "
                 f"{f.get('reached', '-')} that arrived took the predicted path")
        elif f["kind"] == "matrix" and "offered_mbps" in f:
            _say(f"  {f['flow']}: {f['endpoints']} endpoints, {f['pairs']} pairs ({f['source']}); offered "
                 f"{f['offered_mbps']:.1f} Mbit/s, sent {f['sent_mbps']:.1f}, received {f['received_mbps']:.1f} "
                 f"({_fmt(f.get('delivered_pct'), 1)}% of sent)")
            near = [m for m in f.get("matches", []) if m["how"] == "nearest"]
            if f.get("matches"):
                _say(f"    cities (population weights): {len(f['matches']) - len(near)} endpoints by name"
                     + "".join(f"; {m['endpoint']} ~ {m['city']} (nearest, {m['distance_km']:.0f} km)" for m in near))
            for t in f.get("tcp", []):
                _say(f"    TCP bulk {t['src']} -> {t['dst']}: {_fmt(t.get('received_mbps'), 1)} Mbit/s")
    va = s.get("validity")
    if va:
        b, inv = va["bounds"], va["invalid_s"]
        _say(f"  valid samples: {va['valid_samples']} of {va['samples']} ({_fmt(va['valid_pct'], 1)}%); invalid "
             f"{inv['any']:.1f} of {va['played_s']:g} s: step late > {b['step_late_ms']:g} ms {inv['step-late']:.1f} s,"
             f" release p99 > {b['release_late_ms']:g} ms {inv['release-late']:.1f} s, CPU wait > "
             f"{b['cpu_wait_pct']:g}% {inv['cpu']:.1f} s (judged: {', '.join(va['checked']) or 'nothing'})")
    de = s.get("delay_error")
    if de:
        _say(f"  worst |measured - predicted| p50: {_fmt(de['worst_abs_p50_ms'])} ms on "
             f"{_fmt(de['of_predicted_p50_ms'])} ms (bound {_fmt(de['bound_ms'])} ms: "
             f"{'within' if de['within_bound'] else 'OUTSIDE'})")
    load = s.get("link_load")
    if load and load.get("top"):
        _say(f"  link load: {load['links_carrying']} links carried traffic; most loaded (peak utilisation "
             f"over the steps):")
        for t in load["top"][:5]:
            _say(f"    {t['class']} {t['from']} -> {t['to']}: {t['peak_utilisation_pct']:.1f}% of "
                 f"{t['rate_mbps']:g} Mbit/s at step {t['peak_step']} (mean {t['mean_mbps']:.2f} Mbit/s)")
    if "handovers" in s:
        _say(f"  GSL handovers {s['handovers']}, ISL outages {s.get('isl_outages', 0)}")
    if s.get("recovery"):
        from .recovery import describe

        _say("  recovery after scheduled events (lost in the window after, first arrival, delay back "
             "within best + max(1 ms, 3%)):")
        for rec in s["recovery"]:
            for line in describe(rec):
                _say("    " + line)
    _say(f"  results: {out}")


def _constellation_cli(net: Any, emu: Any, fault: Any = None) -> None:
    """Mininet's CLI, taught our node names: they contain '-', which Python's cmd module does not treat
    as part of a command word, and a node name after the command is replaced by its address.

    ``fault`` (optional): a callable returning the watchdog's line once a part of the emulation died; the
    CLI then ends at the next command or Enter (it waits on the terminal, so it cannot end sooner; the
    watchdog printed the line and stopped the clock when it saw the fault)."""
    from mininet.cli import CLI
    from mininet.log import lg

    lg.propagate = False  # Mininet prints through its own handler; ours would print it twice

    class ConstellationCLI(CLI):
        identchars = CLI.identchars + "-"
        prompt = "satnetem> "

        def precmd(self, line: str) -> str:
            if fault is not None and (why := fault()):
                _say(f"the emulation stopped ({why}): tearing down")
                return "exit"
            return line

        def default(self, line: str) -> None:
            first, args, line = self.parseline(line)
            if first in self.mn and args:
                words = [emu.address_of(w) if w in self.mn else w for w in args.split(" ")]
                node = self.mn[first]
                node.sendCmd(" ".join(words))
                self.waitForNode(node)
            else:
                super().default(line)

    ConstellationCLI(net)


def interactive(args: argparse.Namespace) -> int:
    """Mininet's CLI on the live constellation while the clock runs in the background."""
    _require_root()
    _no_world_write()
    sc, tl = load_inputs(args)
    from routing.base import scenario_protocol

    from .cli import check_scenario
    from .network import Emulation, tcp_nodes
    from .shaping import make_shaper

    check_scenario(sc, args.shaper)
    if sc.cluster.address:
        from topologies.scenario import scenario_error

        raise scenario_error(sc, "satnetem cli runs on this host only; 'satnetem run' plays a [cluster]",
                             "cluster.address")
    protocol = scenario_protocol(sc)
    speed = args.speed if args.speed is not None else sc.emulation.speed
    shaper, why = make_shaper(args.shaper or sc.emulation.shaper, sc.seed,
                              sc.emulation.keep_cpus_awake, sc.emulation.carry_lateness)
    _say(f"shaper: {why}")
    emu = None
    playback = None
    watchdog: Any = None
    link_watch: Any = None
    signals = _Signals()
    try:
        with signals.raising():
            emu = Emulation(tl, shaper, protocol, delay_tolerance_ms=sc.emulation.delay_tolerance_ms,
                            run_id=getattr(args, "run_id", None))
            emu.queue_packets = dict(sc.emulation.queue_packets)
            emu.tcp_nodes = tcp_nodes(sc.traffic)
            emu.route_switch = sc.emulation.route_switch
            emu.keep_cpus_awake = sc.emulation.keep_cpus_awake
            emu.build()
            from .watchdog import Watchdog, holder_alive, link_deletions, routing_daemons_alive, shards_alive

            link_check, link_watch = link_deletions(emu, [n.name for n in tl.nodes])
            playback = Playback(tl.step_s, 0, tl.n_steps - 1, emu.apply_step, speed, ahead=emu.prepare_ahead,
                                settle=emu.settle, keep_records=False,
                                rt_priority=sc.emulation.clock_priority)

            def on_fault(line: str, stop_clock: Any = playback.stop) -> None:
                # the user is at the prompt: said now, the clock stopped; the CLI ends at the next command
                _say(f"\nrun stopped: {line}; the clock is stopped: Enter ends the emulation")
                stop_clock()

            watchdog = Watchdog([shards_alive(shaper), holder_alive(getattr(emu, "holder", None)), link_check,
                                 routing_daemons_alive(protocol)], on_fault)

            def clock(pb: Playback = playback, wd: Any = watchdog) -> None:
                try:
                    pb.run()
                except (SatnetemError, OSError) as e:  # a step failed: on this thread, said as a fault
                    wd.stop()
                    if wd.fault is None:
                        wd.fault = wd.check_now() or one_line(str(e) if isinstance(e, SatnetemError) else
                                                              f"{type(e).__name__}: {e}")
                        on_fault(wd.fault)

            th = threading.Thread(target=clock, name="satnetem-clock", daemon=True)
            watchdog.start()
            th.start()
            _say(f"clock running ({tl.n_steps} steps of {tl.step_s:g} s at speed {speed:g}); "
                 f"nodes: e.g. {', '.join(n.name for n in tl.nodes[-4:])}. 'exit' ends the emulation.")
            _constellation_cli(emu.net, emu, lambda wd=watchdog: wd.fault)
    finally:
        signals.hold()
        if watchdog is not None:
            watchdog.stop()
        if playback is not None:
            playback.stop()
        if link_watch is not None:  # before the teardown deletes every interface
            link_watch.close()
        if emu is not None:
            emu.stop()
        shaper.close()
        signals.restore()
    return 1 if watchdog is not None and watchdog.fault else 0


def main() -> None:  # pragma: no cover - convenience for python -m emulator.runner
    from .cli import main as cli_main

    sys.exit(cli_main(["run", *sys.argv[1:]]))
