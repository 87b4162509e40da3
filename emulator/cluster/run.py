"""``satnetem run --cluster ADDRESS``: one scenario played over the hosts of a Ray cluster, with the results
folder and summary of a single-host run.

The driver (this process, on a host of the cluster: the head) joins the cluster, checks that it offers the
hosts asked for (a Ray node per host started with the resource ``satnetem-host-<h>``), has one agent per host
build its part (:func:`emulator.cluster.agent.start`: versions and clocks checked first, the underlay's delay
measured and subtracted), plays the timeline on every host's own clock (:meth:`~emulator.cluster.agent.
Cluster.play`), starts each flow on the host of its source node, and gathers what every host wrote into the
one results folder here (with ``placement.json``: each node's host, and ``steps_by_host.csv``).

What differs from a single-host run: the flows are ``ping``, ``path``, ``udp-probe``, ``iperf3`` (a receiver
runs on its destination's host, the sender on its source's; the one-way delays of a probe between two hosts
are corrected by the clock offsets measured at start) and traffic matrices (each endpoint's program on its
host, from one instant; the plan made here, where the scenario's files are; ``linkload.csv`` from every host's
near ends) and requests (the client on its source's host, each compute node's service on its own host, the
``nearest`` policy's schedule made here; the ``best`` policy's plan made here, and its migrations driven from
here through the agents, :class:`ClusterMoves`) and all-reduces (each rank on its node's host, the files of
the rounds' barrier copied between the hosts by their agents);
a daemon-driven protocol (ospf) runs its daemons in each host's own routers (their statistics added over the
hosts), and the delay daemons' statistics are merged as one daemon's (:func:`emulator.shaping.delayd.
merge_stats`); each host's release lateness is in ``monitor.csv``, merged from every host, which marks samples
valid as on one host; ``steps.csv`` has one row per step with the latest host's lateness and apply time and
the counts added over the hosts (``steps_by_host.csv`` has every host's row; said in the summary's
``cluster.not_recorded``: no ``ahead_ms``). A handover whose link crosses hosts is made as on one host
(make-before-break), each host making or deleting its own ends.
"""

from __future__ import annotations

import argparse
import csv
import io
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from topologies.errors import ApplyError, ConfigError, one_line
from topologies.scenario import ClusterConfig, Scenario, TrafficSpec, scenario_error
from topologies.timeline import Timeline

from .vxlan import VNI_MAX

log = logging.getLogger(__name__)

#: Flow kinds a clustered run starts: their programs run in the source node, and a receiver, if any, in the
#: destination node (on its own host).
CLUSTER_FLOW_KINDS = ("ping", "path", "udp-probe", "iperf3-tcp", "iperf3-udp", "matrix", "request", "allreduce")
#: How long the driver waits for the head's port to answer before giving up, s.
CONNECT_TIMEOUT_S = 5.0
_HOST_RESOURCE = re.compile(r"^satnetem-host-(\d+)$")


def _say(msg: str) -> None:
    print(msg, flush=True)


def cluster_config(args: argparse.Namespace, sc: Scenario) -> ClusterConfig | None:
    """The run's ``[cluster]`` with ``--cluster`` applied, or None for a single-host run. Checked before
    anything is written: the address, and what a clustered run cannot do yet.

    Raises
    ------
    ConfigError
        One line naming the option or the scenario's key.
    """
    import dataclasses

    cfg = sc.cluster
    given = getattr(args, "cluster", None)
    if given is not None:
        cfg = dataclasses.replace(cfg, address=given)
    if not cfg.address:
        return None
    try:
        head_addr(cfg.address)
    except ConfigError as e:
        if given is not None:
            raise
        raise scenario_error(sc, e.message, "cluster.address") from None
    for i, f in enumerate(sc.traffic):
        if f.kind not in CLUSTER_FLOW_KINDS:
            raise scenario_error(sc, f"a {f.kind!r} flow does not run on a cluster yet (these do: "
                                 f"{', '.join(CLUSTER_FLOW_KINDS)})", f"traffic[{i}].kind")
    return cfg


def head_addr(address: str, where: str = "--cluster") -> tuple[str, int]:
    """``IPV4:PORT`` as (address, port).

    Raises
    ------
    ConfigError
        Not an IPv4 address and a port in 1..65535 (names ``where``).
    """
    host, sep, port = address.rpartition(":")
    try:
        ipaddress.IPv4Address(host)
        p = int(port)
        if not sep or not 1 <= p <= 65535:
            raise ValueError
    except ValueError:
        raise ConfigError(f"the Ray head's address must be IPv4:PORT (as 'ray start --head' printed it), got "
                          f"{address!r}", key=where) from None
    return host, p


def vni_base_for(run_id: str, n_links: int) -> int:
    """First VNI of run ``run_id``'s cross-host links, from its run id: VXLAN devices over one host's
    underlay must not share a VNI (the kernel refuses the second with EEXIST), so two runs on the same hosts
    take different blocks of ``2 n_links`` VNIs (a power of two, >= 1,024), chosen by a CRC-32 of the run id
    (two run ids share a block with probability 1 / the number of blocks: 1/255 up to 32,768 link slots).

    Raises
    ------
    ConfigError
        More link slots than VNIs.
    """
    need = 2 * max(1, int(n_links))
    block = 1 << max(10, (need - 1).bit_length())
    blocks = VNI_MAX // block
    if blocks < 1:
        raise ConfigError(f"{n_links} link slots need {need} VNIs, more than VXLAN's {VNI_MAX}", key="vni_base")
    return 1 + (zlib.crc32(run_id.encode()) % blocks) * block


def cluster_hosts(wanted: int, address: str) -> int:
    """How many hosts the run uses: the Ray nodes alive that offer ``satnetem-host-<h>``, hosts 0 .. n - 1.

    Raises
    ------
    ConfigError
        ``wanted`` (0: all) more than the cluster has, or the hosts' numbers have a gap.
    """
    import ray

    have = sorted({int(m.group(1)) for n in ray.nodes() if n.get("Alive") for r in n.get("Resources", {})
                   if (m := _HOST_RESOURCE.match(r))})
    n = wanted or len(have)
    missing = [h for h in range(n) if h not in have]
    if n == 0 or missing:
        offered = ", ".join(f"satnetem-host-{h}" for h in have) or "none"
        raise ConfigError(f"the Ray cluster at {address} has no live node offering satnetem-host-"
                          f"{missing[0] if missing else 0} (offered: {offered}; asked for {n or 'any'} hosts): start "
                          f"each host's node with ray start --resources '{{\"satnetem-host-<h>\": 1}}'",
                          key="cluster.hosts")
    return n


def join(address: str) -> None:
    """Connect this process to the Ray cluster at ``address`` (a driver).

    Raises
    ------
    ConfigError
        The head does not answer, or refuses this driver (its token), in one line.
    """
    import ray

    host, port = head_addr(address)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise ConfigError(f"cannot reach the Ray head at {address}: {why}", key="--cluster") from None
    # (a driver the head refuses: Ray's C++ client also logs each of its ~20 attempts over ~20 s on stderr
    # before the one line below; RAY_BACKEND_LOG_LEVEL would hide them but logs a line of its own)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as e:  # noqa: BLE001 - Ray raises many kinds here; each is one line to the user
        last = one_line(str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
        # the head's port answered (checked above): a refusal here is most often the token
        hint = "; the head answers but refused this driver (" + (
            "" if os.environ.get("RAY_AUTH_MODE") == "token" else "RAY_AUTH_MODE=token is not set; ") + \
            "RAY_AUTH_TOKEN_PATH must name the cluster's token)"
        raise ConfigError(f"cannot join the Ray cluster at {address}: {last}{hint}", key="--cluster") from None


def done_late(played: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each host's step records with ``late_ms`` as a single-host run counts it (:class:`emulator.clock.
    Playback`): from the step's due instant to the end of its apply, by that host's clock (the agent's own
    ``late_ms`` is to the beginning of the apply, kept as ``begin_late_ms``)."""
    return [{**p, "steps": [{**r, "begin_late_ms": r["late_ms"], "late_ms": (r["end_ns"] - r["due_ns"]) / 1e6}
                            for r in p["steps"]]} for p in played]


def _csv_rows(played: list[dict[str, Any]], step_s: float, speed: float) -> tuple[list[list[Any]], list[list[Any]]]:
    """steps.csv's rows (one per step: the latest host's lateness and apply time, counts added over the
    hosts) and steps_by_host.csv's (one per host and step), from :func:`done_late`'s records."""
    from ..network import phase_cells

    by_step: dict[int, list[dict[str, Any]]] = {}
    per_host = []
    for p in played:
        for r in p["steps"]:
            by_step.setdefault(r["step"], []).append(r)
            s = r.get("stats") or {}
            per_host.append([p["host"], r["step"], r["due_ns"], f"{r['late_ms']:.2f}", f"{r['begin_late_ms']:.2f}",
                             f"{r['apply_ms']:.2f}",
                             s.get("links_up", 0), s.get("links_down", 0), s.get("handovers", 0),
                             s.get("param_changes", 0), s.get("routes_changed", 0),
                             *phase_cells(s.get("timings_ms"), ("routes",)),
                             *phase_cells(s.get("timings_ms"))])
    rows = []
    for k in sorted(by_step):
        rs = by_step[k]
        st = [r.get("stats") or {} for r in rs]
        routes = [(s.get("timings_ms") or {}).get("routes", float("nan")) for s in st]
        rows.append([k, f"{k * step_s / speed:.3f}", f"{max(r['late_ms'] for r in rs):.2f}",
                     f"{max(r['apply_ms'] for r in rs):.2f}"]
                    + [sum(s.get(c, 0) for s in st) for c in ("links_up", "links_down", "handovers", "param_changes",
                                                               "routes_changed")]
                    + [f"{np.nanmax(routes) if not np.isnan(routes).all() else float('nan'):.2f}",
                       sum(s.get("moves_in_step", 0) for s in st), "nan"])
    return rows, per_host


def underlay_lines(played: list[dict[str, Any]]) -> list[str]:
    """What the hosts measured of the underlay while playing (:meth:`HostAgent.remeasure_underlay`), one line
    per host: how many times, and per other host the one-way delay's range, ms."""
    out = []
    for h, p in enumerate(played):
        rows = p.get("underlay") or []
        if not rows:
            continue
        failed = sum(1 for r in rows if "error" in r)
        per: dict[int, list[float]] = {}
        slow: dict[int, int] = {}
        for r in rows:
            if "to" in r and r["one_way_ms"] is not None:
                per.setdefault(int(r["to"]), []).append(float(r["one_way_ms"]))
                slow[int(r["to"])] = max(slow.get(int(r["to"]), 0), int(r["too_slow"]))
        times = len({r["t_ns"] for r in rows if "to" in r})
        parts = [f"to host {to} {min(v):.3f}-{max(v):.3f} ms" + (f" ({slow[to]} links shorter)" if slow[to] else "")
                 for to, v in sorted(per.items())]
        out.append(f"host {h}: underlay measured again {times} times while playing" + (": " if parts else "")
                   + ", ".join(parts) + (f"; {failed} failed" if failed else ""))
    return out


def lateness(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The single-host summary's ``lateness`` over ``records`` (each with ``late_ms`` and ``apply_ms``)."""
    late = np.array([r["late_ms"] for r in records])
    app = np.array([r["apply_ms"] for r in records])
    if not len(late):
        return {"steps": 0, "late_ms_median": None, "late_ms_p95": None, "late_ms_max": None,
                "apply_ms_median": None, "apply_ms_p95": None}
    return {"steps": int(len(late)), "late_ms_median": float(np.median(late)),
            "late_ms_p95": float(np.percentile(late, 95)), "late_ms_max": float(late.max()),
            "apply_ms_median": float(np.median(app)), "apply_ms_p95": float(np.percentile(app, 95))}


def _merge_files(out: Path, collected: list[dict[str, Any]]) -> list[str]:
    """Write every host's flow files into ``out`` and one ``flows.json`` (every host's manifest, by flow
    label); the flows that did not start."""
    manifest: list[dict[str, Any]] = []
    errors: list[str] = []
    load: list[list[str]] = []
    header: list[str] | None = None
    for c in collected:
        errors += c.get("errors", [])
        for rel, data in c.get("files", {}).items():
            if rel == "flows.json":
                manifest += json.loads(data)
                continue
            if rel == "linkload.csv":  # each host's links (those whose near end it has): the rows of all
                rows = list(csv.reader(io.StringIO(data.decode())))
                if rows:
                    header = rows[0]
                    load += rows[1:]
                continue
            path = (out / rel).resolve()
            if out.resolve() not in path.parents:  # an agent names files under the folder, nowhere else
                raise ApplyError(f"host {c['host']} sent a file outside the results folder: {rel!r}",
                                 operation="collect")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    (out / "flows.json").write_text(json.dumps(sorted(manifest, key=lambda m: m["label"]), indent=2))
    if header is not None:
        with open(out / "linkload.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            load.sort(key=lambda r: (int(r[0]), int(r[3])))  # by step, then link
            w.writerows(load)
    return errors


def merge_monitors(out: Path, collected: list[dict[str, Any]]) -> int:
    """Every host's ``monitor.csv`` rows (:meth:`emulator.cluster.agent.HostAgent.collect`) into the run's one
    ``monitor.csv``, sorted by time. Each row stands for its own interval (:func:`emulator.validity.
    invalid_intervals`), so a sample is invalid where any host was behind. Returns the rows written."""
    from ..validity import MONITOR_COLUMNS

    rows: list[tuple[float, list[str]]] = []
    for c in collected:
        lines = list(csv.reader(io.StringIO((c.get("monitor") or b"").decode(errors="replace"))))
        if not lines or tuple(lines[0]) != MONITOR_COLUMNS:
            continue
        for r in lines[1:]:
            if len(r) != len(MONITOR_COLUMNS):  # a row cut short (the host stopped while writing it)
                continue
            # the hosts play by the wall clock (HostAgent.play), so their samples' stamps need no reading across
            # its steps (report.load_run); and each host's offset is its own
            r[MONITOR_COLUMNS.index("wall_offset_s")] = ""
            try:
                rows.append((float(r[0]), r))
            except ValueError:
                continue
    rows.sort(key=lambda x: x[0])
    with open(out / "monitor.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(MONITOR_COLUMNS)
        w.writerows(r for _, r in rows)
    return len(rows)


def routing_daemons(per_host: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """A daemon-driven protocol's statistics over every host (each host's ``stats()``, as ``ospf`` gives them):
    the counts and the daemons' CPU time added, the largest update times, the rest as the first host has it;
    ``by_host`` keeps each. None when no host has any."""
    got = [h for h in per_host if h]
    if not got:
        return None
    out: dict[str, Any] = dict(got[0])
    for k in ("reconfigurations", "cost_reconfigurations", "handovers_preformed"):
        if k in out:
            out[k] = sum(int(h.get(k) or 0) for h in got)
    cpu = [float(h["daemons_cpu_s"]) for h in got if h.get("daemons_cpu_s") is not None]
    out["daemons_cpu_s"] = round(sum(cpu), 1) if cpu else None
    for k in ("update_ms_p50", "update_ms_max"):
        out[k] = max((h[k] for h in got if h.get(k) is not None), default=None)
    out["by_host"] = per_host
    return out


class ClusterMoves:
    """Where a ``best`` flow's migrations (:class:`emulator.migration.Migrator`, on the head) run on a cluster:
    each program on its node's host, through that host's agent (:meth:`emulator.cluster.agent.HostAgent.
    move_start` and the calls after it), with its files in the flow's folder there (collected with the flows'
    files at the end); the client's schedule is switched on its source's host. A program's end is polled
    every ``poll_s``."""

    def __init__(self, agents: list[Any], host_of: Any, node_index: Any, label: str, client: str,
                 poll_s: float = 0.02) -> None:
        self.agents, self.host_of, self.index = agents, host_of, node_index
        self.label, self.client, self.poll_s = label, client, poll_s
        self._written: dict[str, int] = {}  # a record's name -> the host that writes it

    def _agent(self, node: str) -> tuple[int, Any]:
        h = int(self.host_of[self.index(node)])
        return h, self.agents[h]

    def address_of(self, node: str) -> str:
        import ray

        return str(ray.get(self._agent(node)[1].node_address.remote(node), timeout=60))

    def start(self, node: str, args: list[str], log_name: str, out_name: str | None = None) -> tuple[int, int]:
        import ray

        h, agent = self._agent(node)
        if out_name is not None:
            self._written[out_name] = h
        return h, int(ray.get(agent.move_start.remote(self.label, node, args, log_name, out_name), timeout=60))

    def ended(self, proc: tuple[int, int]) -> bool:
        import ray

        return ray.get(self.agents[proc[0]].move_poll.remote(proc[1]), timeout=60) is not None

    def wait(self, proc: tuple[int, int], timeout_s: float) -> bool:
        deadline = time.monotonic() + max(0.0, timeout_s)
        while not self.ended(proc):
            if time.monotonic() >= deadline:
                return False
            time.sleep(self.poll_s)
        return True

    def kill(self, proc: tuple[int, int]) -> None:
        import ray

        ray.get(self.agents[proc[0]].move_kill.remote(proc[1]), timeout=60)

    def read(self, name: str) -> str | None:
        import ray

        h = self._written.get(name)
        return None if h is None else ray.get(self.agents[h].move_read.remote(self.label, name), timeout=60)

    def switch(self, target: str) -> None:
        import ray

        ray.get(self._agent(self.client)[1].move_switch.remote(self.label, target), timeout=60)


def run_cluster(cfg: ClusterConfig, sc: Scenario, tl: Timeline, *, protocol: str, shaper: str,
                flows_wanted: list[TrafficSpec], last: int, speed: float, out: Path, run_id: str | None) -> int:
    """Play ``tl`` over the cluster ``cfg`` names and write ``out`` as a single-host run does (module
    docstring). Returns the command's exit status: 0 complete, 1 stopped by a fault, 130 interrupted.

    Raises
    ------
    ConfigError
        Before anything is built: the cluster cannot be reached or joined, lacks the hosts asked for, a host
        runs other versions or its clock is off (each one line).
    """
    import ray

    from routing.base import scenario_protocol

    from ..runner import _best_policy, finish, nearest_schedule
    from ..validity import Bounds
    from .agent import start

    proto = scenario_protocol(sc, protocol)  # the predictions behind a 'nearest' request's schedule

    run_id = run_id or f"{secrets.token_hex(3)}"
    # the traffic matrices' plans, here where the scenario's files are (a matrix_csv): the hosts get them
    from topologies.traffic_matrix import plan_matrix

    matrix_plans = {i: plan_matrix(f, tl, sc.base_dir) for i, f in enumerate(flows_wanted) if f.kind == "matrix"}
    computes = [tl.nodes[i].name for i in tl.nodes_of("compute")]
    compute = None
    if computes:  # each host starts the services of its own compute nodes, as one host does all of them
        from ..traffic.compute import request_work_ms

        compute = {"work_ms": request_work_ms(flows_wanted), "throttle_share": sc.power_config().throttle_share}
    join(cfg.address)
    summary: dict[str, Any] = {"scenario": sc.name, "seed": sc.seed, "protocol": protocol, "speed": speed,
                               "steps_planned": last + 1, "step_s": tl.step_s, "complete": False, "run_id": run_id}
    cluster = None
    played: list[dict[str, Any]] = []
    migrators: list[Any] = []  # the 'best' flows' (emulator.migration.Migrator), driven from here
    try:
        n_hosts = cluster_hosts(cfg.hosts, cfg.address)
        vni_base = cfg.vni_base or vni_base_for(run_id, tl.n_links)
        _say(f"cluster {cfg.address}: {n_hosts} hosts, placement '{cfg.placement}', run id {run_id} (each host's "
             f"part {run_id}-h<h>), VNIs from {vni_base}")
        t = time.monotonic()
        _say(f"building {len(tl.nodes)} nodes and {tl.n_links} links over {n_hosts} hosts ...")
        try:
            cluster = start(head_addr(cfg.address)[0], tl, n_hosts, run_id, cfg.placement, protocol, shaper, sc.seed,
                            cfg.max_clock_offset_ms, vni_base, dict(sc.emulation.queue_packets), say=_say,
                            compute=compute)
        except ApplyError as e:
            if "exists" in str(e).lower():
                raise ApplyError(f"{e} (another run on these hosts may use VNIs from {vni_base}: set [cluster] "
                                 f"vni_base)", operation="cluster build") from None
            raise
        summary["build_s"] = round(time.monotonic() - t, 2)
        from .placement import cross_host_links, describe_one

        cross = cross_host_links(tl, cluster.placement.host_of)
        per = {"strategy": cfg.placement, "hosts": n_hosts,
               "nodes_per_host": cluster.placement.nodes_per_host.tolist(), "cross_host_slots": cross.total,
               "cross_host_max_at_once": cross.max_at_once, "link_slots": tl.n_links}
        b0 = cluster.builds[0]
        summary.update(shaper=b0.get("shaper_name"), shaper_reason=b0.get("shaper"))
        summary["cluster"] = {
            "address": cfg.address, "hosts": n_hosts, "underlay": list(cluster.underlay), "placement": per,
            "vni_base": vni_base, "timings_s": {k: round(v, 2) for k, v in cluster.timings_s.items()},
            "clocks_ms": [{"offset": c.offset_ms, "bound": c.bound_ms} for c in cluster.clocks],
            "builds": [{k: b.get(k) for k in ("host", "run_id", "address", "nodes", "cross_ends", "underlay",
                                              "underlay_too_slow", "timings_ms")} for b in cluster.builds],
            "not_recorded": ["steps.csv ahead_ms"]}
        (out / "placement.json").write_text(json.dumps(
            {nd.name: int(h) for nd, h in zip(tl.nodes, cluster.placement.host_of.tolist())}))
        _say(f"  placement: {describe_one(per)}")
        services = [b["compute_services"] for b in cluster.builds if b.get("compute_services")]
        if services:
            rss = sorted(x["rss_kb_median"] for x in services)
            summary["compute_services"] = {
                "nodes": sum(x["nodes"] for x in services), "cgroup": services[0]["cgroup"],
                "start_s": max(x["start_s"] for x in services),
                "rss_kb_total": sum(x["rss_kb_total"] for x in services),
                "rss_kb_median": rss[len(rss) // 2], "pss_kb_total": sum(x["pss_kb_total"] for x in services),
                "by_host": [b.get("compute_services") for b in cluster.builds]}
            _say(f"  compute capacity: {services[0]['capacity']}")
            _say("  compute services: " + ", ".join(f"host {b['host']} {b['compute_services']['nodes']}"
                                                    for b in cluster.builds if b.get("compute_services")))
        for b in cluster.builds:
            ul = ", ".join(f"to host {h} {u['one_way_ms']:.3f} ms (jitter {u['jitter_ms']:.3f})"
                           for h, u in enumerate(b.get("underlay") or []) if u)
            _say(f"  host {b['host']} ({b['address']}): {b['nodes']} nodes, {b['cross_ends']} VXLAN ends; "
                 f"underlay one way {ul or '-'}")
        (out / "addresses.json").write_text(json.dumps(ray.get(cluster.agents[0].addresses.remote(last + 1),
                                                                timeout=120)))
        play_s = (last + 1) * tl.step_s / speed
        _say(f"  built in {summary['build_s']} s; playing {last + 1} steps ({play_s:.0f} s wall clock) on every "
             f"host's clock")
        flows = []
        for i, f in enumerate(flows_wanted):
            dur = f.duration_s / speed if f.duration_s is not None else play_s - f.start_s / speed
            if dur > 0:
                flows.append((i, f, dur))

        best_plans: dict[str, Any] = {}
        if any(f.kind == "request" and f.policy == "best" for _, f, _ in flows):
            from ..migration import flow_loads

            best_plans = flow_loads(tl, proto, flows_wanted, computes, last + 1)[1]

        def on_start(start_ns: int) -> None:
            schedules = {}
            for i, f, _ in flows:  # the 'nearest' policy's targets from each step on, as one host computes them
                if f.kind == "request" and f.policy == "nearest":
                    schedules[i] = nearest_schedule(tl, proto, f.src, computes, start_ns / 1e9, speed, last + 1)
                if f.kind == "request" and f.policy == "best":  # the state moves between hosts' nodes from here
                    def hosts(d: Path, f: TrafficSpec = f) -> ClusterMoves:
                        return ClusterMoves(cluster.agents, cluster.placement.host_of, tl.node_index, f.label,
                                            f.src)

                    schedules[i], mg = _best_policy(hosts, tl, best_plans[f.label], f, i, start_ns / 1e9, speed, out)
                    migrators.append(mg)
            bounds = Bounds.of(sc.emulation)
            (out / "run.json").write_text(json.dumps({
                "run_id": run_id, "t0_unix": start_ns / 1e9, "speed": speed, "step_s": tl.step_s,
                "protocol": protocol, "shaper": summary["shaper"], "steps_planned": last + 1,
                "validity": bounds.as_dict(),
                "cluster": {"address": cfg.address, "hosts": n_hosts}}))
            started = ray.get([a.start_flows.remote(flows, start_ns, speed, matrix_plans, schedules, cluster.agents)
                               for a in cluster.agents], timeout=60)
            for h, labels in enumerate(started):
                if labels:
                    _say(f"  host {h} runs flows {', '.join(labels)}")
            for mg in migrators:
                mg.start()

        try:
            played = cluster.play(last, on_start=on_start, speed=speed, underlay_every_s=cfg.underlay_every_s,
                                  clock_priority=sc.emulation.clock_priority)
            summary["complete"] = True
        except ApplyError as e:
            summary["fault"] = one_line(str(e))
            _say(f"run stopped: {summary['fault']}")
        for mg in migrators:  # a transfer still under way ends now (its record says so), as on one host
            mg.stop()
        if summary["complete"]:
            collected = ray.get([a.collect.remote() for a in cluster.agents], timeout=120)
            for line in _merge_files(out, collected):
                _say(f"traffic: {line}")
            merge_monitors(out, collected)
            rd = routing_daemons([c.get("routing_daemons") for c in collected])
            if rd is not None:
                summary["routing_daemons"] = rd
            from ..shaping.delayd import merge_stats

            if counters := merge_stats([c.get("shaper_stats") or {} for c in collected]):
                counters.pop("late_hist", None)  # 2,201 bins: the quantiles say it (as on one host)
                counters["hosts"] = sum(1 for c in collected if c.get("shaper_stats"))
                summary["shaper_stats"] = counters
    except KeyboardInterrupt:
        _say("interrupted: tearing every host's part down")
    finally:
        for mg in migrators:  # idempotent; an interrupt may have come while one ran
            mg.stop()
        t = time.monotonic()
        if cluster is not None and not summary.get("fault"):  # after a fault every live agent has stopped
            try:
                left = cluster.stop()
                summary.setdefault("cluster", {})["left"] = {str(x["host"]): x["left"] for x in left}
                cg = [g for x in left for g in x.get("cgroups_left", [])]
                if cg:
                    summary.setdefault("compute_services", {})["cgroups_left"] = cg
            except Exception as e:  # noqa: BLE001 - the summary must still be written
                _say(f"teardown: {one_line(str(e))}")
        summary["teardown_s"] = round(time.monotonic() - t, 2)
        ray.shutdown()
        if cluster is not None:
            from ..network import PHASE_COLUMNS

            played = done_late(played)
            rows, per_host = _csv_rows(played, tl.step_s, speed)
            with open(out / "steps.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["step", "due_s", "late_ms", "apply_ms", "links_up", "links_down", "handovers",
                            "param_changes", "routes_changed", "routes_ms", "moves_in_step", "ahead_ms"])
                w.writerows(rows)
            with open(out / "steps_by_host.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["host", "step", "due_ns", "late_ms", "begin_late_ms", "apply_ms", "links_up",
                            "links_down", "handovers", "param_changes", "routes_changed", "routes_ms",
                            *(c for c, _ in PHASE_COLUMNS)])
                w.writerows(per_host)
            summary["lateness"] = lateness([r for p in played for r in p["steps"]])
            summary["cluster"]["lateness_by_host"] = [lateness(p["steps"]) for p in played]
            summary["cluster"]["underlay_every_s"] = cfg.underlay_every_s
            summary["cluster"]["underlay_measured"] = [p.get("underlay", []) for p in played]
            for line in underlay_lines(played):
                _say(f"  {line}")
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return finish(out, summary)
