"""The ``best`` request policy and the migrations it plans: which compute node serves a client at each step,
and, when that changes, moving the service's state from the old node to the new one before the users switch.

The plan is computed from the timeline and the scenario alone (predicted RTT from the client, each node's
load from the scenario's request flows, its power state and how long it will keep it; docs/model.md,
"Requests to the best node");
the executor runs the transfers in the live network (emulator.traffic.migrate in the two nodes'
namespaces) and moves the client's target (its schedule file, re-read when it changes) only once the
state has arrived, so the client's requests keep going to the old node meanwhile.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from topologies.power import NORMAL
from topologies.timeline import Reason, Timeline

log = logging.getLogger(__name__)

MIGRATE_PORT_BASE = 7100
#: slack added to the planned lead of a transfer: processes start late on a loaded machine
LEAD_MARGIN_S = 2.0
MIGRATION_COLUMNS = ("planned_step", "switch_step", "from", "to", "bytes", "t_begin_unix_s", "t_connected_unix_s",
                     "t_end_unix_s", "duration_s", "ok", "switched_before_state")


@dataclass(frozen=True)
class BestRule:
    """The weights of the ``best`` choice (docs/model.md, "Requests to the best node").

    ``stickiness_ms``: the users stay on their node while it is usable and scores at most this much above
    the best one (a move costs a state transfer and a reconnection; a marginal gain is not worth it).
    ``horizon_s`` and ``battery_penalty_ms``: a node that leaves its normal power state (throttles or
    stops, as its planned battery gives) within ``horizon_s`` scores ``battery_penalty_ms`` x the share
    of the horizon it will not last.
    """

    stickiness_ms: float = 10.0
    horizon_s: float = 300.0
    battery_penalty_ms: float = 50.0


@dataclass(frozen=True)
class BestPlan:
    """Per step (shape (n_steps,)): the serving node's index into ``computes`` (-1: none available) and
    its predicted RTT from the client in ms; ``usable`` (n_computes, n_steps): reachable from the client, in
    the normal power state and not saturated; ``score_ms`` (n_computes, n_steps): what the choice
    minimises (inf where not usable); ``load_rps``: the requests per second this flow puts on each node
    and step (for the flows planned after it)."""

    computes: tuple[str, ...]
    best: np.ndarray
    rtt_ms: np.ndarray
    usable: np.ndarray
    score_ms: np.ndarray | None = None
    load_rps: np.ndarray | None = None


@dataclass(frozen=True)
class PlannedMigration:
    """One hand-over: from ``switch_step`` on ``dst`` serves instead of ``src``; the state's transfer begins
    at ``start_step``."""

    src: str
    dst: str
    start_step: int
    switch_step: int


def available(tl: Timeline, computes: list[str], steps: int) -> np.ndarray:
    """(n_computes, steps) bool: the node is in its normal power state (not throttled, not stopped); all True
    without power arrays."""
    out = np.ones((len(computes), steps), dtype=bool)
    if tl.compute_power is None:
        return out
    order = [tl.nodes[i].name for i in tl.nodes_of("compute")]
    for j, name in enumerate(computes):
        out[j] = tl.compute_power[order.index(name), :steps] == NORMAL
    return out


def normal_left_s(normal: np.ndarray, step_s: float) -> np.ndarray:
    """(n, steps): seconds from each step until the node first leaves its normal state (0 where it is not
    in it; inf where it stays normal to the end of the plan, which cannot see further)."""
    n, steps = normal.shape
    pos = np.where(normal, steps, np.arange(steps)[None, :])  # the step itself where not normal
    nxt = np.minimum.accumulate(pos[:, ::-1], axis=1)[:, ::-1]  # the first non-normal step at or after k
    left = (nxt - np.arange(steps)[None, :]) * step_s
    return np.where(nxt >= steps, np.inf, left.astype(float))


def time_in_node_ms(service_ms: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """Mean time a request spends in a node that serves one request at a time in ``service_ms`` each, at
    utilisation ``rho`` (M/D/1: service + rho x service / (2 (1 - rho))); inf at rho >= 1 (saturated)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        wait = np.where(rho < 1, rho * service_ms / (2 * (1 - rho)), np.inf)
    return service_ms + wait


def score_ms(rtt_ms: np.ndarray, service_ms: np.ndarray, rho: np.ndarray, normal: np.ndarray, step_s: float,
             rule: BestRule = BestRule()) -> np.ndarray:
    """(n, steps) the ``best`` score: predicted RTT + mean time in the node + the battery penalty; inf where
    the node is unreachable, not in its normal power state or saturated."""
    left = normal_left_s(normal, step_s)
    battery = rule.battery_penalty_ms * np.clip(1.0 - left / rule.horizon_s, 0.0, 1.0)
    s = rtt_ms + time_in_node_ms(service_ms, rho) + battery
    return np.where(np.isfinite(rtt_ms) & normal & np.isfinite(s), s, np.inf)


def choose(score: np.ndarray, stickiness_ms: float) -> np.ndarray:
    """(steps,) index of the serving node at each step: the least score, except that the node chosen at the
    step before stays while it is usable and within ``stickiness_ms`` of the least; -1 where no node is
    usable (the last choice is then remembered for the next step)."""
    steps = score.shape[1]
    out = np.full(steps, -1, dtype=np.int64)
    low = np.argmin(score, axis=0)
    cur = -1
    for k in range(steps):
        b = int(low[k])
        if not np.isfinite(score[b, k]):
            continue
        if cur >= 0 and score[cur, k] <= score[b, k] + stickiness_ms:
            b = cur
        out[k] = cur = b
    return out


def _table_links(table: Any, a: int, b: int) -> list[int] | None:
    """The links a route table's next hops take from ``a`` to ``b`` (None: no route, or a loop)."""
    from routing.paths import table_path

    try:
        nodes, links = table_path(table, a, b)
    except ValueError:  # a loop: nothing arrives
        return None
    return links if nodes else None


def _tree_links(nh: np.ndarray, link: np.ndarray, row: dict[int, int], a: int, b: int) -> list[int] | None:
    """The links of the shortest-path tree towards ``b`` (routing.graph.next_hops) from ``a``."""
    links, v = [], a
    while v != b:
        if nh[row[b], v] < 0:
            return None
        links.append(int(link[row[b], v]))
        v = int(nh[row[b], v])
    return links


def predicted_rtts(tl: Timeline, protocol: Any, srcs: list[str], computes: list[str], steps: int
                   ) -> dict[str, np.ndarray]:
    """Predicted RTT from each client in ``srcs`` to each compute node, ms: ``{src: (n_computes, steps)}``,
    inf where unreachable.

    The same prediction as :func:`routing.predict.predict` (a centralised protocol's route table followed
    both ways, or for a daemon protocol the shortest-delay path; link delays summed without the hop
    epsilon), computed once per step for every pair: predict() also finds each pair's best path with a
    Dijkstra run of its own, which the choice does not need (4 clients x 50 nodes x 120 steps took 50 s
    through it, 2-3 s this way)."""
    from routing.base import get_protocol
    from routing.graph import build_graph, next_hops, path_delay_ms

    proto = get_protocol(protocol) if isinstance(protocol, str) else protocol
    centralised = getattr(proto, "kind", "centralised") != "daemon"
    s_idx = [tl.node_index(x) for x in srcs]
    c_idx = [tl.node_index(x) for x in computes]
    out = {x: np.full((len(computes), steps), np.inf) for x in srcs}
    for k in range(min(steps, tl.n_steps)):
        snap = tl.snapshot(k)
        if centralised:
            walk = partial(_table_links, proto.compute(tl, k, snap))
        else:
            dests = np.array(sorted(set(s_idx) | set(c_idx)))
            _, nh, link = next_hops(build_graph(tl.link_a, snap, len(tl.nodes)), dests)
            walk = partial(_tree_links, nh, link, {int(d): r for r, d in enumerate(dests)})
        for x, si in zip(srcs, s_idx):
            for j, ci in enumerate(c_idx):
                there, back = walk(si, ci), walk(ci, si)
                out[x][j, k] = (np.inf if there is None or back is None
                                else path_delay_ms(snap, there) + path_delay_ms(snap, back))
    return out


def best_plan(tl: Timeline, protocol: Any, src: str, computes: list[str], steps: int, *, rate_pps: float = 0.0,
              work_ms: float = 0.0, other_rps: np.ndarray | None = None, rule: BestRule = BestRule(),
              rtt_ms: np.ndarray | None = None) -> BestPlan:
    """The ``best`` node for client ``src`` at each step (:func:`score_ms`, :func:`choose`).

    Parameters
    ----------
    rate_pps, work_ms : float
        This flow's requests per second and CPU time per request (its share of the nodes' load).
    other_rps : numpy.ndarray, optional
        (n_computes, steps) requests per second the other flows send to each node (:func:`flow_loads`).
    rtt_ms : numpy.ndarray, optional
        (n_computes, steps) predicted RTT from ``src`` (default: :func:`predicted_rtts`).
    """
    rtt = predicted_rtts(tl, protocol, [src], computes, steps)[src] if rtt_ms is None else rtt_ms
    share = np.array([float(tl.nodes[tl.node_index(c)].info.get("cpu_share", 1.0)) for c in computes])
    # one request at a time per node: more than a core does not make one request faster
    service = (work_ms / np.minimum(1.0, share))[:, None]
    others = np.zeros((len(computes), steps)) if other_rps is None else other_rps[:, :steps]
    rho = (others + rate_pps) * service / 1e3
    score = score_ms(rtt, service, rho, available(tl, computes, steps), tl.step_s, rule)
    best = choose(score, rule.stickiness_ms)
    cols = np.arange(steps)
    pick = np.maximum(best, 0)
    load = np.zeros((len(computes), steps))
    load[pick[best >= 0], cols[best >= 0]] = rate_pps
    return BestPlan(tuple(computes), best, np.where(best < 0, np.nan, rtt[pick, cols]), np.isfinite(score),
                    score, load)


def rule_of(flow: Any) -> BestRule:
    """The :class:`BestRule` of a ``best`` request flow: its ``stickiness_ms``, ``battery_horizon_s`` and
    ``battery_penalty_ms`` where given, the defaults elsewhere."""
    d = BestRule()
    return BestRule(d.stickiness_ms if flow.stickiness_ms is None else flow.stickiness_ms,
                    d.horizon_s if flow.battery_horizon_s is None else flow.battery_horizon_s,
                    d.battery_penalty_ms if flow.battery_penalty_ms is None else flow.battery_penalty_ms)


def flow_loads(tl: Timeline, protocol: Any, flows: list[Any], computes: list[str], steps: int
               ) -> tuple[np.ndarray, dict[str, BestPlan]]:
    """The requests per second every request flow sends to each compute node at each step, and the plan of
    each ``best`` flow (by label). Flows are taken in the scenario's order: a ``best`` flow sees the load of
    every ``fixed``, ``round-robin`` and ``nearest`` flow and of the ``best`` flows before it."""
    load = np.zeros((len(computes), steps))
    t = np.arange(steps) * tl.step_s
    clients = list(dict.fromkeys(f.src for f in flows if f.kind == "request" and f.policy in ("nearest", "best")))
    rtts = predicted_rtts(tl, protocol, clients, computes, steps) if clients else {}
    best_flows = []
    for f in flows:
        if f.kind != "request":
            continue
        end = f.start_s + f.duration_s if f.duration_s is not None else np.inf
        on = (t >= f.start_s) & (t < end)
        if f.policy == "fixed" and f.dst in computes:
            load[computes.index(f.dst), on] += f.rate_pps
        elif f.policy == "round-robin":
            load[:, on] += f.rate_pps / len(computes)
        elif f.policy == "nearest":  # the least predicted RTT, whatever the power and the load
            near = np.argmin(rtts[f.src], axis=0)
            load[near[on], np.flatnonzero(on)] += f.rate_pps
        elif f.policy == "best":
            best_flows.append((f, on))
    plans: dict[str, BestPlan] = {}
    for f, on in best_flows:
        plan = best_plan(tl, protocol, f.src, computes, steps, rate_pps=f.rate_pps, work_ms=f.work_ms,
                         other_rps=load, rtt_ms=rtts[f.src], rule=rule_of(f))
        plans[f.label] = plan
        assert plan.load_rps is not None
        load = load + plan.load_rps * on[None, :]
    return load, plans


def lead_s(tl: Timeline, state_bytes: int, step: int) -> float:
    """How long before a switch its transfer begins: 1.5 x the state's time at the slowest link up at ``step``
    (a bound on any path's bottleneck, so the lead is never too short for want of the path) plus a margin."""
    rates = tl.rate_mbps[:, step][(tl.state[:, step] == Reason.UP) & (tl.rate_mbps[:, step] > 0)]
    r_mbps = float(rates.min()) if rates.size else 1.0
    return 1.5 * state_bytes * 8 / (r_mbps * 1e6) + LEAD_MARGIN_S


def plan_migrations(tl: Timeline, plan: BestPlan, state_bytes: int) -> list[PlannedMigration]:
    """A migration at every change of the serving node; a step with no node available keeps the last one.

    The transfer begins its lead (:func:`lead_s`) before the change, but not before the new node is usable
    without a break up to the change: the users may move to it as soon as their state has arrived."""
    out: list[PlannedMigration] = []
    last = -1
    for k, b in enumerate(plan.best.tolist()):
        if b < 0 or b == last:
            continue
        if last >= 0:
            lead = math.ceil(lead_s(tl, state_bytes, k) / tl.step_s) if state_bytes else 0
            start = max(0, k - lead)
            gaps = np.flatnonzero(~plan.usable[b, start:k])
            if gaps.size:  # the new node is not usable all the way: begin once it is
                start += int(gaps[-1]) + 1
            out.append(PlannedMigration(plan.computes[last], plan.computes[b], start, k))
        last = b
    return out


def scenario_migrations(sc: Any, tl: Timeline) -> list[dict[str, Any]]:
    """The migrations every ``best`` request flow of scenario ``sc`` plans over ``tl`` (for ``plan``): each a
    dict of ``flow``, ``from``, ``to``, ``mb``, ``start_step``, ``switch_step`` and ``switch_t_s``."""
    from routing.base import scenario_protocol

    computes = [tl.nodes[i].name for i in tl.nodes_of("compute")]
    flows = [f for f in sc.traffic if f.kind == "request" and f.policy == "best"]
    if not flows or not computes:
        return []
    protocol = scenario_protocol(sc, sc.routing.protocol)
    _, plans = flow_loads(tl, protocol, list(sc.traffic), computes, tl.n_steps)
    out = []
    for f in flows:
        state_bytes = int(round(f.migrate_state_mb * 1e6))
        for m in plan_migrations(tl, plans[f.label], state_bytes):
            out.append({"flow": f.label, "from": m.src, "to": m.dst, "mb": f.migrate_state_mb,
                        "start_step": m.start_step, "switch_step": m.switch_step,
                        "switch_t_s": m.switch_step * tl.step_s})
    return out


def initial_target(plan: BestPlan) -> str:
    ok = plan.best[plan.best >= 0]
    return plan.computes[int(ok[0])] if ok.size else plan.computes[0]


class LocalMoves:
    """Where a :class:`Migrator` runs its transfers on one host: programs in the nodes' namespaces
    (``emu.node(n).popen``), files in the flow's folder ``out``, the client's schedule file ``schedule``."""

    def __init__(self, emu: Any, out: Path, schedule: Path) -> None:
        self.emu, self.out, self.schedule = emu, out, schedule

    def address_of(self, node: str) -> str:
        return str(self.emu.address_of(node))

    def start(self, node: str, args: list[str], log_name: str, out_name: str | None = None) -> subprocess.Popen:
        """``python -m emulator.traffic.migrate ARGS`` in ``node``'s namespace (``--out`` the flow folder's
        ``out_name`` when given), its output into ``log_name``."""
        argv = [sys.executable, "-m", "emulator.traffic.migrate", *args]
        if out_name is not None:
            argv += ["--out", str(self.out / out_name)]
        with open(self.out / log_name, "w") as f:
            return self.emu.node(node).popen(argv, stdout=f, stderr=subprocess.STDOUT)

    def ended(self, proc: subprocess.Popen) -> bool:
        return proc.poll() is not None

    def wait(self, proc: subprocess.Popen, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for ``proc`` to end; whether it has."""
        try:
            proc.wait(timeout=max(0.0, timeout_s))
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def read(self, name: str) -> str | None:
        try:
            return (self.out / name).read_text()
        except OSError:
            return None

    def switch(self, target: str) -> None:
        switch_schedule(self.schedule, target)


def switch_schedule(schedule: Path, target: str) -> None:
    """Send a request client's next requests to ``target`` from now: a new entry in its schedule file, which
    the client re-reads when the file's modification time changes (replaced whole, never half written)."""
    entries = json.loads(schedule.read_text())
    entries.append({"t_unix_s": time.time(), "target": target})
    tmp = schedule.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries))
    tmp.replace(schedule)


class Migrator:
    """Runs a flow's planned migrations in the live network and moves its client's target after each.

    ``hosts`` starts the transfer's programs and switches the client (:class:`LocalMoves` on one host;
    :class:`emulator.cluster.run.ClusterMoves` over the agents of a cluster); ``out`` receives
    ``migrations.csv`` (each transfer's JSON record is written where its sender runs, read back by ``hosts``).
    """

    def __init__(self, hosts: Any, migrations: list[PlannedMigration], state_bytes: int, t0_unix: float,
                 step_wall_s: float, out: Path, port: int) -> None:
        self.hosts, self.migrations, self.state_bytes = hosts, migrations, state_bytes
        self.t0_unix, self.step_wall_s, self.out, self.port = t0_unix, step_wall_s, out, port
        self.records: list[dict[str, Any]] = []
        self._procs: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="migrator", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop waiting for the next migration and end a transfer under way (its record is then not ok)."""
        self._stop.set()
        for p in list(self._procs):
            try:
                self.hosts.kill(p)
            except Exception as e:  # noqa: BLE001 - a host gone: its own teardown ends the program
                log.warning("migration program not ended: %s", e)
        self._thread.join(timeout=10)

    def _start(self, node: str, args: list[str], log_name: str, out_name: str | None = None) -> Any:
        p = self.hosts.start(node, args, log_name, out_name)
        self._procs.append(p)
        return p

    def _run(self) -> None:
        try:
            self._migrate()
        except Exception as e:  # noqa: BLE001 - a thread of its own: a host gone (the run stops for it) or a
            # program that cannot start; said in one line, and the migrations left are not made
            log.warning("migrations stopped: %s", str(e).strip().splitlines()[-1] if str(e).strip() else repr(e))

    def _migrate(self) -> None:
        h = self.hosts
        for i, m in enumerate(self.migrations):
            at = self.t0_unix + m.start_step * self.step_wall_s
            if self._stop.wait(max(0.0, at - time.time())):
                return
            timeout_s = max(5.0, (m.switch_step - m.start_step) * self.step_wall_s + 5.0)
            rec: dict[str, Any] = {"planned_step": m.start_step, "switch_step": m.switch_step, "from": m.src,
                                   "to": m.dst, "bytes": self.state_bytes, "switched_before_state": False}
            if self.state_bytes:
                port = str(self.port)
                recv = self._start(m.dst, ["recv", "--bind", h.address_of(m.dst), "--port", port,
                                           "--timeout", f"{timeout_s:.1f}"], f"migration{i}.recv.log")
                send = self._start(m.src, ["send", "--dst", h.address_of(m.dst), "--port", port, "--bytes",
                                           str(self.state_bytes), "--timeout", f"{timeout_s:.1f}"],
                                   f"migration{i}.send.log", f"migration{i}.json")
                if not h.wait(send, self.t0_unix + m.switch_step * self.step_wall_s - time.time()):
                    # the planned change has come with the state still on its way: the old node is about to
                    # stop serving (or to be out of reach), so the users move now and their state follows
                    h.switch(m.dst)
                    rec["switched_before_state"] = True
                for p in (send, recv):
                    if not h.wait(p, timeout_s + 5):
                        h.kill(p)
                try:
                    rec.update(json.loads(h.read(f"migration{i}.json") or ""))
                except ValueError:
                    rec.update({"ok": False})
            else:
                at = self.t0_unix + m.switch_step * self.step_wall_s
                if self._stop.wait(max(0.0, at - time.time())):
                    return
                rec.update({"ok": True})
            if not rec["switched_before_state"]:
                h.switch(m.dst)
            self.records.append(rec)
            with open(self.out / "migrations.csv", "w") as f:
                f.write(",".join(MIGRATION_COLUMNS) + "\n")
                for r in self.records:
                    f.write(",".join(str(r.get(c, "")) for c in MIGRATION_COLUMNS) + "\n")
            log.info("migration %s -> %s: %s", m.src, m.dst, rec)


def summarise_migrations(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``migrations.csv`` (numbers as numbers); empty when the file is missing."""
    import csv

    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []
    out = []
    for r in rows:
        d: dict[str, Any] = {}
        for k, v in r.items():
            if k in ("from", "to"):
                d[k] = v
            elif k in ("ok", "switched_before_state"):
                d[k] = v == "True"
            else:
                d[k] = float(v) if v not in ("", None) else None
        out.append(d)
    return out


__all__ = ["BestPlan", "BestRule", "Migrator", "PlannedMigration", "best_plan", "choose", "flow_loads",
           "plan_migrations", "score_ms"]
