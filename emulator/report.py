"""Plots and the summary of a results folder, rebuilt from its files alone (no root, no network).

Reads ``samples.csv`` (one row per probe sample), ``steps.csv`` (one row per applied step),
``timeline.npz`` and ``summary.json``; writes PNG and SVG plots into ``plots/``.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from topologies.errors import ConfigError
from topologies.timeline import LINK_CLASSES, Reason, Timeline

log = logging.getLogger(__name__)


SAMPLE_COLUMNS = ("flow", "kind", "metric", "t_s", "step", "seq", "measured_ms", "predicted_ms", "best_ms",
                  "valid")


def _load_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return default


def run_validity(folder: Path, run: dict[str, Any], step_s: float) -> tuple[list[Any], Any, list[str]]:
    """The run's invalid intervals (:mod:`emulator.validity`), its bounds and which criteria were judged."""
    from .validity import Bounds, invalid_intervals, read_monitor, read_steps

    bounds = Bounds.from_dict(run.get("validity"))
    due, late = read_steps(folder)
    mon = read_monitor(folder)
    checked = ["step-late"] if len(due) else []
    if mon is not None and np.isfinite(mon["release_p99_us"]).any():
        checked.append("release-late")
    if mon is not None and np.isfinite(mon["cpu_wait_pct"]).any() and bounds.cpu_wait_pct < 100:
        checked.append("cpu")
    return (invalid_intervals(due, late, mon, bounds, step_s, float(run.get("speed", 1.0))),
            bounds, checked)


def load_run(folder: Path) -> dict[str, Any]:
    """``run.json`` ({} without it), with ``wall_clock`` (in memory only) for :func:`run_seconds`: where the run
    recorded the wall clock less its own monotonic one (``run.json``'s ``wall_offset_s`` at the start, and
    ``monitor.csv``'s every 0.5 s, :class:`emulator.validity.HostMonitor`), (the wall-clock instants of those
    records, sorted; how far the wall clock had moved from the start's offset by each); None without them (an
    older folder, a clustered run: its hosts play by the wall clock)."""
    from .validity import read_monitor

    run = _load_json(folder / "run.json", {})
    if not run:
        return run
    run["wall_clock"] = None
    mon = read_monitor(folder)
    if mon is None or run.get("wall_offset_s") is None:
        return run
    ok = np.isfinite(mon["wall_offset_s"]) & np.isfinite(mon["t_s"])
    if not ok.any():
        return run
    moved = mon["wall_offset_s"][ok] - float(run["wall_offset_s"])
    wall = float(run["t0_unix"]) + mon["t_s"][ok] + moved  # the wall clock at each record
    order = np.argsort(wall, kind="stable")
    run["wall_clock"] = (wall[order], moved[order])
    return run


def run_seconds(t_unix: Any, run: dict[str, Any]) -> np.ndarray:
    """Seconds of the timeline (the run's start 0, scaled by its speed) at wall-clock stamps ``t_unix`` (ping's
    ``-D``, the probes' own): the steps play by the monotonic clock, so a stamp after a step of the wall clock
    (NTP setting it, a VM's clock set again) is read less what the wall clock had moved by the last record at
    or before it (:func:`load_run`); stamps within 0.5 s after a step may still be read by the offset before it."""
    t = np.asarray(t_unix, float)
    rec = run.get("wall_clock")
    if rec is not None and t.size:
        wall, moved = rec
        i = np.searchsorted(wall, t, side="right") - 1
        t = t - np.where(i >= 0, moved[np.maximum(i, 0)], 0.0)
    return (t - run["t0_unix"]) * float(run.get("speed", 1.0))


def _rel_steps(t_unix: np.ndarray, run: dict[str, Any], tl: Timeline) -> tuple[np.ndarray, np.ndarray]:
    """Timeline seconds and step index of wall-clock stamps (:func:`run_seconds`)."""
    t = run_seconds(t_unix, run)
    step = np.clip(np.floor(t / tl.step_s), 0, tl.n_steps - 1).astype(int)
    return t, step


def clock_skew_ms(folder: Path) -> Any:
    """A clustered run's folder: ``skew(src, dst)``, the clock of ``dst``'s host minus that of ``src``'s, ms, as
    measured at start (``summary.json``'s ``cluster.clocks_ms``, each host's offset from the head;
    ``placement.json``), to take from a one-way delay stamped by two hosts. 0 on one host, or without them."""
    summary = _load_json(folder / "summary.json", {})
    placement = _load_json(folder / "placement.json", {})
    clocks = (summary.get("cluster") or {}).get("clocks_ms") or []
    offset = [float(c.get("offset") or 0.0) for c in clocks]

    def skew(src: str, dst: str) -> float:
        hs, hd = placement.get(src), placement.get(dst)
        if hs is None or hd is None or not (0 <= hs < len(offset) and 0 <= hd < len(offset)):
            return 0.0
        return offset[hd] - offset[hs]

    return skew


def build_samples(folder: Path, tl: Timeline) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Per-sample records of every ping and udp-probe flow, with the predicted and best delays, from the
    raw files in ``flows/``; plus a summary entry per flow of every kind. Writes ``samples.csv``."""
    from routing.predict import in_handover_gap, predict

    from .probes import parse_ping
    from .traffic.iperf import parse_iperf_json
    from .traffic.pathprobe import path_rounds
    from .traffic.service import summarise_requests
    from .traffic.udpprobe import summarise_udp, udp_samples

    run = load_run(folder)
    manifest = _load_json(folder / "flows.json", [])
    if not run or not manifest:
        return {}, []
    steps = played_steps(folder, tl)
    names = {n.name: i for i, n in enumerate(tl.nodes)}
    pairs = sorted({(names[f["src"]], names[f["dst"]]) for f in manifest if f["dst"] in names})
    pred = predict(tl, run.get("protocol", "shortest-delay"), pairs, steps)
    # a request flow's targets (every compute node under nearest/best): their RTTs all at once, one route
    # table per step, not predict()'s Dijkstra per pair (4 clients x 50 nodes x 120 steps: 2 s, not 50)
    from .migration import predicted_rtts

    clients = sorted({f["src"] for f in manifest if f.get("targets") and f["src"] in names})
    targets = sorted({t for f in manifest for t in f.get("targets", {}) if t in names})
    req_rtt = ({src: dict(zip(targets, np.where(np.isfinite(a), a, np.nan), strict=True))
                for src, a in predicted_rtts(tl, run.get("protocol", "shortest-delay"), clients, targets,
                                             steps).items()} if clients and targets else {})
    from .validity import mark_valid

    invalid, _, _ = run_validity(folder, run, tl.step_s)
    skew = clock_skew_ms(folder)
    samples: dict[str, dict[str, Any]] = {}  # arrays per column, and the flow's kind and metric
    flows: list[dict[str, Any]] = []
    for f in manifest:
        d = folder / "flows" / f["label"].replace(":", "_")
        kind = f["kind"]
        entry: dict[str, Any] = {"flow": f["label"], "kind": kind, "src": f["src"], "dst": f["dst"]}
        pp = pred.get((names.get(f["src"], -1), names.get(f["dst"], -1)))
        if kind in ("ping", "udp-probe"):
            if kind == "ping":
                ps = parse_ping((d / "ping.txt").read_text(errors="replace") if (d / "ping.txt").exists() else "",
                                f["start_unix_s"], 1.0 / f["rate_pps"])
                t_unix, seq, meas = ps.sent_unix_s, ps.seq, ps.rtt_ms
                metric = "rtt"
            else:
                try:
                    us = udp_samples(str(d / "sent.csv"), str(d / "recv.csv"))
                    # stamped by the sender's host, then by the receiver's: on a cluster, less their clocks' offset
                    t_unix, seq, meas = us.sent_unix_s, us.seq, us.one_way_ms - skew(f["src"], f["dst"])
                except ConfigError as e:
                    log.warning("%s: %s", f["label"], e)
                    t_unix = seq = meas = np.array([])
                metric = "one_way"
            t, step = _rel_steps(np.asarray(t_unix, float), run, tl)
            if pp is not None and len(step):
                predicted = (pp.rtt_ms if metric == "rtt" else pp.forward_ms)[np.minimum(step, steps - 1)]
                best = (pp.best_rtt_ms if metric == "rtt" else pp.best_forward_ms)[np.minimum(step, steps - 1)]
            else:
                predicted = best = np.full(len(step), np.nan)
            # per step: the predicted forward path differs from the step before (recovery counts these)
            fp = pp.forward_paths if pp is not None else []
            change = np.array([k > 0 and fp[k] != fp[k - 1] for k in range(len(fp))], bool)
            # probes a handover gap on the predicted path drops (topologies.gsl.handover_gaps)
            in_gap = in_handover_gap(tl, fp, t, predicted if metric == "rtt" else None) if fp else \
                np.zeros(len(t), bool)
            samples[f["label"]] = {"kind": kind, "metric": metric, "t_s": t, "step": step,
                                   "seq": np.asarray(seq, float), "measured_ms": np.asarray(meas, float),
                                   "predicted_ms": predicted, "best_ms": best, "path_change": change,
                                   "in_gap": in_gap,
                                   "valid": mark_valid(t, np.asarray(meas, float), invalid,
                                                       float(run.get("speed", 1.0)))}
            entry.update(summarise_samples_one(samples[f["label"]]))
            if kind == "udp-probe" and (d / "sent.csv").exists():
                try:
                    u = summarise_udp(str(d / "sent.csv"), str(d / "recv.csv"))
                    entry.update({"reordered": u["reordered"], "duplicates": u["duplicates"]})
                except ConfigError as e:
                    log.warning("%s: %s", f["label"], e)
        elif kind.startswith("iperf3"):
            text = (d / "client.json").read_text(errors="replace") if (d / "client.json").exists() else ""
            res = parse_iperf_json(text)
            entry.update({k: v for k, v in res.items() if k != "intervals"})
        elif kind == "request":
            if (d / "requests.csv").exists():
                try:
                    entry.update(summarise_requests(str(d / "requests.csv")))
                except ConfigError as e:
                    log.warning("%s: %s", f["label"], e)
            mine = req_rtt.get(f["src"], {})
            entry["predicted_network_rtt_ms"] = {t: stats(mine[t]) for t in f.get("targets", {}) if t in mine}
            if (d / "requests.csv").exists():  # network (predicted RTT) + queueing + service
                from .traffic.service import latency_split

                def rtt_of(target: str, t_unix: np.ndarray, mine: dict[str, np.ndarray] = mine) -> np.ndarray:
                    _, k = _rel_steps(t_unix, run, tl)
                    a = mine.get(target)
                    return a[np.minimum(k, steps - 1)] if a is not None else np.full(len(k), np.nan)

                try:
                    entry["latency_split"] = latency_split(str(d / "requests.csv"), rtt_of)
                except ConfigError as e:
                    log.warning("%s: %s", f["label"], e)
            if f.get("policy") == "best":  # the state transfers of its migrations (emulator.migration)
                from .migration import summarise_migrations

                entry["migrations"] = summarise_migrations(d / "migrations.csv")
                if entry["migrations"] and (d / "requests.csv").exists():
                    entry["migration_cost"] = migration_cost(entry["migrations"], d / "requests.csv")
        elif kind == "matrix":
            from .traffic.matrix import summarise_matrix

            try:
                entry.update(summarise_matrix(d))
            except ConfigError as e:
                log.warning("%s: %s", f["label"], e)
        elif kind == "allreduce":
            from .traffic.allreduce import summarise_allreduce

            try:
                entry.update(summarise_allreduce(d))
            except ConfigError as e:
                log.warning("%s: %s", f["label"], e)
        elif kind == "path":
            rounds = path_rounds(str(d / "paths.csv")) if (d / "paths.csv").exists() else []
            entry.update(compare_paths(rounds, tl, folder, run, pp))
        flows.append(entry)
    with open(folder / "samples.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(SAMPLE_COLUMNS)
        for label, sm in samples.items():
            for i in range(len(sm["t_s"])):
                w.writerow([label, sm["kind"], sm["metric"], f"{sm['t_s'][i]:.4f}", int(sm["step"][i]),
                            int(sm["seq"][i]), _num(sm["measured_ms"][i]), _num(sm["predicted_ms"][i]),
                            _num(sm["best_ms"][i]), int(sm["valid"][i])])
    return samples, flows


def migration_cost(migrations: list[dict[str, Any]], requests_csv: Path) -> dict[str, Any]:
    """What a flow's migrations cost: how many, bytes moved, transfer time (total and longest), how many
    were ok or let the users move before their state arrived, and the latency of the requests sent while
    a transfer was under way against the others' (median, ms; failures counted apart)."""
    from .traffic import read_records

    rows = read_records(requests_csv, {"t_send_unix_s": float, "ok": lambda v: bool(int(v)),
                                       "total_ms": lambda v: float(v) if v else np.nan})
    t = np.array([r["t_send_unix_s"] for r in rows], float)
    ok = np.array([r["ok"] for r in rows], bool)
    lat = np.array([r["total_ms"] for r in rows], float)
    during = np.zeros(len(rows), bool)
    for m in migrations:
        a, b = m.get("t_begin_unix_s"), m.get("t_end_unix_s")
        if a is not None and b is not None:
            during |= (t >= a) & (t <= b)
    durations = [float(m["duration_s"]) for m in migrations if m.get("duration_s") is not None]

    def p50(mask: np.ndarray) -> float | None:
        x = lat[mask & ok]
        x = x[np.isfinite(x)]
        return round(float(np.median(x)), 3) if x.size else None

    return {"count": len(migrations), "ok": sum(bool(m.get("ok")) for m in migrations),
            "switched_before_state": sum(bool(m.get("switched_before_state")) for m in migrations),
            "bytes": int(sum(m.get("bytes") or 0 for m in migrations)),
            "transfer_s_total": round(sum(durations), 3), "transfer_s_max": round(max(durations), 3) if durations
            else None, "requests_during": int(during.sum()), "failed_during": int((during & ~ok).sum()),
            "latency_p50_during_ms": p50(during), "latency_p50_otherwise_ms": p50(~during)}


def _num(x: float) -> str:
    return "" if not np.isfinite(x) else f"{x:.3f}"


def compare_paths(rounds, tl: Timeline, folder: Path, run: dict[str, Any], pp) -> dict[str, Any]:
    """How often the path a probe recorded is the path the routes were predicted to take."""
    addr_file = folder / "addresses.json"
    owners = _load_json(addr_file, {})
    if not rounds or pp is None or not owners:
        return {"rounds": len(rounds), "matched": None}
    matched = reached = 0
    mismatches: list[dict[str, Any]] = []
    for r in rounds:
        if not r.reached:
            continue
        reached += 1
        _, step = _rel_steps(np.array([r.t_unix_s]), run, tl)
        k = int(step[0])
        want = [tl.nodes[n].name for n in pp.forward_paths[min(k, len(pp.forward_paths) - 1)][1:]]
        got = [owners.get(h, {}).get(str(k), owners.get(h, {}).get("*", h)) if h else "?" for h in r.hops]
        if got == want:
            matched += 1
        elif len(mismatches) < 5:
            mismatches.append({"step": k, "measured": got, "predicted": want})
    return {"rounds": len(rounds), "reached": reached, "matched": matched,
            "matched_pct": round(100 * matched / reached, 1) if reached else None, "mismatches": mismatches}


def stats(x: np.ndarray) -> dict[str, float | None]:
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    if not len(x):
        return {"p50": None, "p95": None, "p99": None, "min": None, "max": None}
    return {"p50": float(np.percentile(x, 50)), "p95": float(np.percentile(x, 95)),
            "p99": float(np.percentile(x, 99)), "min": float(x.min()), "max": float(x.max())}


def summarise_samples_one(s: dict[str, np.ndarray]) -> dict[str, Any]:
    m, p, b = s["measured_ms"], s["predicted_ms"], s["best_ms"]
    lost = int(np.isnan(m).sum())
    err = m - p
    with np.errstate(invalid="ignore", divide="ignore"):
        stretch = m / b
    # predicted lost: no predicted path, or sent into a handover gap on it
    gap = s["in_gap"] if "in_gap" in s else np.zeros(len(p), bool)
    ok = np.asarray(s["valid"], bool) if "valid" in s else np.ones(len(m), bool)
    n_ok, lost_ok = int(ok.sum()), int(np.isnan(m[ok]).sum())
    # the same figures on the valid samples alone (emulator.validity): both are printed
    valid = {"samples": n_ok, "pct": round(100 * n_ok / len(m), 2) if len(m) else None, "lost": lost_ok,
             "loss_pct": round(100 * lost_ok / n_ok, 2) if n_ok else None, "measured_ms": stats(m[ok]),
             "error_ms": stats(err[ok]), "abs_error_ms": stats(np.abs(err[ok]))}
    return {"valid": valid, "metric": s["metric"], "sent": int(len(m)), "lost": lost,
            "loss_pct": round(100 * lost / len(m), 2) if len(m) else None,
            "predicted_lost": int(np.count_nonzero(~np.isfinite(p) | gap)),
            "measured_ms": stats(m), "predicted_ms": stats(p), "error_ms": stats(err),
            "abs_error_ms": stats(np.abs(err)), "stretch": stats(stretch)}


def _events(tl: Timeline) -> tuple[np.ndarray, np.ndarray]:
    """Times (s) of GSL handovers and of ISL outages starting (pointing outage or acquisition)."""
    gsl = tl.link_class == LINK_CLASSES.index("gsl")
    peer = tl.peer[gsl]
    ho_steps = np.flatnonzero(np.any(peer[:, 1:] != peer[:, :-1], axis=0)) + 1
    isl = tl.link_class == LINK_CLASSES.index("isl")
    st = tl.state[isl]
    out_start = (st[:, 1:] == Reason.OUTAGE) & (st[:, :-1] != Reason.OUTAGE)
    out_steps = np.flatnonzero(out_start.any(axis=0)) + 1
    return ho_steps * tl.step_s, out_steps * tl.step_s


def scheduled_s(tl: Timeline | None, played_s: float | None = None) -> np.ndarray:
    """Times (s) of the steps at which scheduled events ([[events]]) take effect (starts and ends)."""
    if tl is None:
        return np.array([])
    t: set[float] = set()
    for ev in tl.report.get("events", []):
        for o in ev["occurrences"]:
            if o["end_step"] is not None:
                t.add(o["step"] * tl.step_s)
                if o["end_step"] < tl.n_steps:
                    t.add(o["end_step"] * tl.step_s)
    out = np.array(sorted(t), float)
    return out if played_s is None else out[out <= played_s]


def _mark_scheduled(ax: Any, events_s: np.ndarray) -> None:
    for i, t in enumerate(events_s):
        ax.axvline(t, color="crimson", lw=1.0, ls="-.", label="scheduled event" if i == 0 else None)


def _shade_invalid(ax: Any, invalid_s: np.ndarray | None) -> None:
    """Grey bands over the intervals in which samples are invalid (``(n, 2)`` timeline seconds)."""
    for i, (a, b) in enumerate(invalid_s if invalid_s is not None else []):
        ax.axvspan(a, b, color="0.6", alpha=0.3, lw=0, label="invalid (machine behind)" if i == 0 else None)


#: Flows drawn on one axes beyond this many get their legend beside the axes: inside, 24 terminals' legend
#: covered most of the curves (the access example's error CDF and loss plots).
LEGEND_INSIDE_MAX = 6


def _flow_legend(ax) -> None:
    """The legend of the flows drawn on ``ax``: inside the axes for a few entries, beside them (two columns
    from 17 on) for more, where it hides no curve."""
    n = len(ax.get_legend_handles_labels()[1])
    if n <= LEGEND_INSIDE_MAX:
        ax.legend(fontsize=7)
    else:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=1 if n <= 16 else 2)


def _save(fig, folder: Path, name: str) -> list[Path]:
    paths = []
    for ext in ("png", "svg"):
        p = folder / f"{name}.{ext}"
        fig.savefig(p, dpi=110, bbox_inches="tight")
        paths.append(p)
    return paths


def plot_allreduce(flows: list[dict[str, Any]], folder: Path, tl: Timeline | None = None,
                   run: dict[str, Any] | None = None, events_s: np.ndarray | None = None,
                   invalid_s: np.ndarray | None = None) -> list[Path]:
    """Every all-reduce flow's rounds, ``allreduce.png``: each round's time (s) as a bar at its start (s from
    the run's start; by round number without the run's clock), the median, and the spans where a node of
    the ring was throttled (orange) or stopped (red) by its battery, which a rank inside the node's cgroup
    feels as a smaller CPU share; on the time axis, the scheduled events and the invalid intervals."""
    import matplotlib.pyplot as plt

    from topologies.power import STOPPED, THROTTLED

    done = [f for f in flows if f["kind"] == "allreduce" and f.get("round_s")]
    if not done:
        return []
    fig, axes = plt.subplots(len(done), 1, figsize=(9, 3.2 * len(done)), squeeze=False)
    computes = [tl.nodes[i].name for i in tl.nodes_of("compute")] if tl is not None else []
    for ax, f in zip(axes[:, 0], done):
        starts = f.get("round_start_unix_s")
        if run and starts and len(starts) == len(f["round_s"]):
            x = run_seconds(starts, run)
            ax.bar(x, f["round_s"], width=np.array(f["round_s"]) * float(run.get("speed", 1.0)), align="edge",
                   color="tab:blue", edgecolor="white", lw=0.3)
            ax.set_xlabel("round start (s from the run's start; bar width: the round)")
            _mark_scheduled(ax, events_s if events_s is not None else np.array([]))
            _shade_invalid(ax, invalid_s)
            if tl is not None and tl.compute_power is not None:
                spans: dict[tuple[float, float, str, str], list[str]] = {}
                for name in f["nodes"]:
                    if name not in computes:
                        continue
                    row = computes.index(name)
                    for code, colour, what in ((THROTTLED, "orange", "throttled"), (STOPPED, "red", "stopped")):
                        for a, b in _spans(tl.compute_power[row] == code, tl.step_s):
                            spans.setdefault((a, b, colour, what), []).append(name)
                for i, ((a, b, colour, what), names) in enumerate(sorted(spans.items())):
                    ax.axvspan(a, b, color=colour, alpha=0.15, lw=0)
                    ax.text(a, 0.97 - 0.08 * (i % 4), f" {', '.join(names)} {what}", transform=ax.get_xaxis_transform(),
                            fontsize=7, va="top")
        else:
            ax.bar(range(len(f["round_s"])), f["round_s"], color="tab:blue")
            ax.set_xlabel("round")
        ax.axhline(f["round_s_p50"], color="k", lw=1, ls="--", label=f"median {f['round_s_p50']:.3f} s")
        ax.set_ylabel("round time (s)")
        ax.set_title(f"{f['flow']}: ring all-reduce of {f['size_mb']:g} MB among {len(f['nodes'])} nodes, "
                     f"{f['rounds']} rounds{'' if f['correct'] else ' (WRONG RESULT)'}", fontsize=9)
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    paths = _save(fig, folder, "allreduce")
    plt.close(fig)
    return paths


def _spans(mask: np.ndarray, step_s: float) -> list[tuple[float, float]]:
    """(start s, end s) of each run of True in a per-step mask."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return [(a * step_s, b * step_s) for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))]


def plot_requests(folder: Path, tl: Timeline, run: dict[str, Any], flows: list[dict[str, Any]],
                  plots: Path, events_s: np.ndarray | None = None, invalid_s: np.ndarray | None = None) -> list[Path]:
    """Each request flow's latency over time (one colour per serving node, failures as red crosses), over
    the served nodes' penumbra (light grey), umbra (grey), throttled (orange) and stopped (red) spans and
    the state transfers of its migrations (blue), with the scheduled events and the invalid intervals:
    ``requests.png``."""
    import matplotlib.pyplot as plt

    from topologies.power import STOPPED, THROTTLED

    from .traffic import read_records

    done = [f for f in flows if f["kind"] == "request"
            and (folder / "flows" / f["flow"].replace(":", "_") / "requests.csv").is_file()]
    if not done or not run:
        return []
    computes = [tl.nodes[i].name for i in tl.nodes_of("compute")]
    fig, axes = plt.subplots(len(done), 1, figsize=(9, 3.2 * len(done)), squeeze=False)
    for ax, f in zip(axes[:, 0], done):
        rows = read_records(folder / "flows" / f["flow"].replace(":", "_") / "requests.csv",
                            {"t_send_unix_s": float, "target": str, "ok": lambda v: bool(int(v)),
                             "total_ms": lambda v: float(v) if v else np.nan})
        t = run_seconds([r["t_send_unix_s"] for r in rows], run)
        used = list(dict.fromkeys(r["target"] for r in rows))
        n_label = 0
        for k, name in enumerate(used):
            on = np.array([r["target"] == name and r["ok"] for r in rows], bool)
            ax.plot(t[on], [rows[i]["total_ms"] for i in np.flatnonzero(on)], ".", ms=3, color=f"C{k}",
                    label=f"served by {name}")
            if name not in computes:
                continue
            # the node's shadow and power spans while it served this flow (its first to its last request)
            sent = t[np.array([r["target"] == name for r in rows], bool)]
            lo, hi = float(sent.min()), float(sent.max()) + tl.step_s
            j = computes.index(name)
            node = tl.nodes_of("compute")[j]
            sat = tl.peer[np.flatnonzero(tl.link_a == node), 0]
            shades = []
            if tl.sat_sunlight is not None and sat.size and sat[0] >= 0:
                row = tl.nodes_of("sat").index(int(sat[0]))
                shades += [(tl.sat_sunlight[row] == 1, "0.8", "penumbra"),
                           (tl.sat_sunlight[row] == 2, "0.45", "umbra")]
            if tl.compute_power is not None:
                shades += [(tl.compute_power[j] == THROTTLED, "orange", "throttled"),
                           (tl.compute_power[j] == STOPPED, "red", "stopped")]
            for mask, colour, what in shades:
                for a, b in _spans(mask, tl.step_s):
                    a, b = max(a, lo), min(b, hi)
                    if a >= b:
                        continue
                    ax.axvspan(a, b, color=colour, alpha=0.2, lw=0)
                    ax.text(a, 0.97 - 0.08 * (n_label % 4), f" {name} {what}", transform=ax.get_xaxis_transform(),
                            fontsize=7, va="top")
                    n_label += 1
        bad = np.array([not r["ok"] for r in rows], bool)
        if bad.any():
            ax.plot(t[bad], np.full(bad.sum(), np.nanmax([r["total_ms"] for r in rows] + [1.0])), "x", color="red",
                    label=f"failed ({bad.sum()})")
        for m in f.get("migrations", []):
            if m.get("t_connected_unix_s") and m.get("t_end_unix_s"):
                a, b = run_seconds([m["t_connected_unix_s"], m["t_end_unix_s"]], run)
                ax.axvspan(a, b, color="tab:blue", alpha=0.3, lw=0)
                ax.text(a, 0.02, f" {m['from']} -> {m['to']} {(m.get('bytes') or 0) / 1e6:g} MB",
                        transform=ax.get_xaxis_transform(), fontsize=7, color="tab:blue")
        _mark_scheduled(ax, events_s if events_s is not None else np.array([]))
        _shade_invalid(ax, invalid_s)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("request latency (ms)")
        ax.set_yscale("log")  # tens of ms served, seconds when a node or the host is starved
        split = f.get("latency_split") or {}
        parts = [(w, (split.get(f"{w}_ms") or {}).get("p50")) for w in ("network", "queueing", "service")]
        ax.set_title(f"{f['flow']} ({f['src']}): {f.get('count', 0)} requests, {f.get('failures', 0)} failed"
                     + ("; p50 " + " + ".join(f"{w} {v:.1f}" for w, v in parts) + " ms"
                        if all(v is not None for _, v in parts) else ""), fontsize=9)
        ax.legend(fontsize=7, loc="center left")
    fig.tight_layout()
    paths = _save(fig, plots, "requests")
    plt.close(fig)
    return paths


def compute_availability(tl: Timeline, played: int, folder: Path) -> dict[str, Any] | None:
    """The compute nodes' availability over the played steps, from the plan's power states (what the run
    enforced each step): ``availability.csv`` (per step: nodes normal, throttled, stopped, and how many of
    their satellites are sunlit, in penumbra, in umbra) and the summary's ``compute_availability``
    (node-time shares, the fewest nodes available at a step and when, each node's share of steps
    available). None without compute nodes or power states."""
    from topologies.power import NORMAL, STOPPED, THROTTLED

    nodes = tl.nodes_of("compute")
    if not nodes or tl.compute_power is None or played <= 0:
        return None
    power = tl.compute_power[:, :played]
    sun = None
    if tl.sat_sunlight is not None:
        sats = tl.nodes_of("sat")
        rows = [sats.index(tl.node_index(tl.nodes[c].info["satellite"])) if tl.nodes[c].info.get("satellite")
                else -1 for c in nodes]
        if min(rows) >= 0:
            sun = tl.sat_sunlight[rows, :played]
    counts = {name: (power == code).sum(axis=0) for name, code in
              (("normal", NORMAL), ("throttled", THROTTLED), ("stopped", STOPPED))}
    with open(folder / "availability.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "t_s", "normal", "throttled", "stopped", "sunlit", "penumbra", "umbra"])
        for k in range(played):
            light = [int((sun[:, k] == c).sum()) for c in (0, 1, 2)] if sun is not None else ["", "", ""]
            w.writerow([k, f"{k * tl.step_s:g}", *(int(counts[n][k]) for n in counts), *light])
    n = len(nodes)
    low = int(np.argmin(counts["normal"]))
    share = (power == NORMAL).mean(axis=1)
    return {"nodes": n, "steps": played,
            **{f"{name}_pct": round(100.0 * float(c.sum()) / (n * played), 2) for name, c in counts.items()},
            "fewest_available": int(counts["normal"][low]), "fewest_available_t_s": round(low * tl.step_s, 3),
            "node_available_pct": {tl.nodes[c].name: round(100.0 * float(x), 1) for c, x in zip(nodes, share)}}


def plot_availability(tl: Timeline, played: int, plots: Path, step: int | None = None,
                      events_s: np.ndarray | None = None) -> list[Path]:
    """``availability.png``: above, a map at ``step`` (default: where the fewest compute nodes are
    available) of every satellite coloured by its sunlight and of the compute nodes coloured by their share
    of the run available (normal power state), the marker saying their state at that step; below, how many
    compute nodes are normal, throttled and stopped at each step. Over the bundled coastlines."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from topologies.power import NORMAL, STOPPED, THROTTLED

    from .basemap import draw_basemap

    nodes = tl.nodes_of("compute")
    if not nodes or tl.compute_power is None or played <= 0:
        return []
    power = tl.compute_power[:, :played]
    normal = (power == NORMAL).sum(axis=0)
    k = int(np.argmin(normal)) if step is None else min(max(0, step), played - 1)
    sats = tl.nodes_of("sat")
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 8.6), gridspec_kw={"height_ratios": [2.2, 1]})
    draw_basemap(ax)
    lla = tl.sat_lla[:, k, :]
    lon = ((lla[:, 1] + 180) % 360) - 180
    lat = lla[:, 0]
    handles = []
    if tl.sat_sunlight is not None:
        for code, colour, what in ((0, "#e8c34a", "satellite sunlit"), (1, "#b08a5a", "satellite in penumbra"),
                                   (2, "#3b3b4f", "satellite in umbra")):
            m = tl.sat_sunlight[:, k] == code
            ax.plot(lon[m], lat[m], ".", color=colour, ms=3, zorder=1.5)
            handles.append(Line2D([], [], ls="", marker=".", color=colour, label=what))
    else:
        ax.plot(lon, lat, ".", color="#357", ms=2, zorder=1.5)
    rows = [sats.index(tl.node_index(tl.nodes[c].info["satellite"])) for c in nodes]
    share = 100.0 * (power == NORMAL).mean(axis=1)
    for code, marker, what in ((NORMAL, "o", "normal"), (THROTTLED, "s", "throttled"), (STOPPED, "X", "stopped")):
        m = tl.compute_power[:, k] == code
        if not m.any():
            continue
        sc = ax.scatter(lon[rows][m], lat[rows][m], c=share[m], cmap="RdYlGn", vmin=0, vmax=100, marker=marker,
                        s=46, edgecolors="k", linewidths=0.6, zorder=3)
        handles.append(Line2D([], [], ls="", marker=marker, mfc="w", mec="k", label=f"compute node {what} now"))
    fig.colorbar(sc, ax=ax, fraction=0.025, pad=0.01, label="share of the run available (%)")
    for kind, marker, colour, what in (("terminal", "o", "darkorange", "user terminal"),
                                       ("gateway", "^", "green", "gateway")):
        ids = tl.nodes_of(kind)
        if ids:
            ax.plot([tl.nodes[i].info.get("lon_deg", 0) for i in ids],
                    [tl.nodes[i].info.get("lat_deg", 0) for i in ids], marker, color=colour, ms=5, ls="", zorder=2.5)
            handles.append(Line2D([], [], ls="", marker=marker, color=colour, label=what))
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_xlabel("longitude (deg)")
    ax.set_ylabel("latitude (deg)")
    ax.set_title(f"compute nodes at t = {k * tl.step_s:g} s ({tl.time_of(k).strftime('%Y-%m-%d %H:%M:%S')} UTC): "
                 f"{int(normal[k])} of {len(nodes)} available", fontsize=9)
    ax.legend(handles=handles, loc="lower left", fontsize=7)
    t = np.arange(played) * tl.step_s
    ax2.stackplot(t, [(power == c).sum(axis=0) for c in (NORMAL, THROTTLED, STOPPED)],
                  colors=["tab:green", "orange", "tab:red"], labels=["normal", "throttled", "stopped"], alpha=0.8)
    ax2.axvline(k * tl.step_s, color="k", lw=0.8, ls="--")
    _mark_scheduled(ax2, events_s if events_s is not None else np.array([]))
    ax2.set_xlim(0, max(t[-1], tl.step_s))
    ax2.set_ylim(0, len(nodes))
    ax2.set_xlabel("time (s)")
    ax2.set_ylabel("compute nodes")
    ax2.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    paths = _save(fig, plots, "availability")
    plt.close(fig)
    return paths


def plot_rtt(samples, tl: Timeline | None, folder: Path, played_s: float | None = None,
             invalid_s: np.ndarray | None = None) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(samples), 1, figsize=(10, 3.2 * len(samples)), squeeze=False)
    ho, outage = _events(tl) if tl is not None else (np.array([]), np.array([]))
    if played_s is not None:
        ho, outage = ho[ho <= played_s], outage[outage <= played_s]
    for ax, (probe, s) in zip(axes[:, 0], samples.items()):
        what = "RTT" if s["metric"] == "rtt" else "one-way delay"
        ok = np.isfinite(s["measured_ms"])
        ax.plot(s["t_s"][ok], s["measured_ms"][ok], ".", ms=3, label=f"measured {what}")
        order = np.argsort(s["t_s"])
        ax.plot(s["t_s"][order], s["predicted_ms"][order], "-", lw=1.2, label=f"predicted {what}")
        lost = ~ok
        if lost.any():
            y = np.nanmax(s["measured_ms"]) if ok.any() else 0
            ax.plot(s["t_s"][lost], np.full(lost.sum(), y), "x", color="red", ms=4, label="lost")
        for i, t in enumerate(ho):
            ax.axvline(t, color="grey", lw=0.6, ls="--", label="GSL handover" if i == 0 else None)
        for i, t in enumerate(outage):
            ax.axvline(t, color="orange", lw=0.6, ls=":", label="ISL outage" if i == 0 else None)
        _mark_scheduled(ax, scheduled_s(tl, played_s))
        _shade_invalid(ax, invalid_s)
        ax.set_title(probe)
        ax.set_xlabel("time (s)")
        ax.set_ylabel(f"{what} (ms)")
        ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    paths = _save(fig, folder, "rtt")
    plt.close(fig)
    return paths


def plot_loss(samples, folder: Path, bin_s: float = 1.0, events_s: np.ndarray | None = None,
              invalid_s: np.ndarray | None = None) -> list[Path]:
    """Loss per ``bin_s`` over time per flow; ``events_s``: times of scheduled events, drawn as markers;
    ``invalid_s``: invalid intervals, shaded."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3))
    _mark_scheduled(ax, events_s if events_s is not None else np.array([]))
    _shade_invalid(ax, invalid_s)
    for probe, s in samples.items():
        if not len(s["t_s"]):
            continue
        bins = np.floor(s["t_s"] / bin_s).astype(int)
        bins -= bins.min()
        sent = np.bincount(bins)
        lost = np.bincount(bins, weights=np.isnan(s["measured_ms"]).astype(float), minlength=len(sent))
        with np.errstate(invalid="ignore", divide="ignore"):
            pct = np.where(sent > 0, 100 * lost / sent, np.nan)
        t = (np.arange(len(sent)) + 0.5) * bin_s + np.floor(np.nanmin(s["t_s"]) / bin_s) * bin_s
        ax.step(t, pct, where="mid", label=probe)
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"loss per {bin_s:g} s (%)")
    ax.set_ylim(-2, 102)
    _flow_legend(ax)
    paths = _save(fig, folder, "loss")
    plt.close(fig)
    return paths


def plot_error_cdf(samples, folder: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for probe, s in samples.items():
        e = (s["measured_ms"] - s["predicted_ms"])
        e = np.sort(e[np.isfinite(e)])
        if len(e):
            ax.plot(e, np.arange(1, len(e) + 1) / len(e), label=probe)
    ax.set_xlabel("measured - predicted delay (ms)")
    ax.set_ylabel("CDF")
    ax.grid(alpha=0.3)
    _flow_legend(ax)
    paths = _save(fig, folder, "rtt_error_cdf")
    plt.close(fig)
    return paths


def path_nodes(tl: Timeline, src: int, dst: int, step: int) -> list[int]:
    """Shortest-delay path (node indices) at a step, from the routing layer's computation."""
    from routing.paths import shortest_path

    return shortest_path(tl, src, dst, step)


def plot_map(tl: Timeline, folder: Path, steps: list[int], pairs: list[tuple[str, str]]) -> list[Path]:
    import matplotlib.pyplot as plt

    from .basemap import draw_basemap

    paths: list[Path] = []
    sats = np.array(tl.nodes_of("sat"))
    isl = np.flatnonzero(tl.link_class == LINK_CLASSES.index("isl"))
    gws = tl.nodes_of("gateway")
    for step in steps:
        fig, ax = plt.subplots(figsize=(11, 5.6))
        draw_basemap(ax)
        lla = tl.sat_lla[:, step, :]
        lon = ((lla[:, 1] + 180) % 360) - 180
        lat = lla[:, 0]
        up = isl[tl.state[isl, step] == Reason.UP]
        a = tl.link_a[up]
        b = tl.peer[up, step]
        wrap = np.abs(lon[a] - lon[b]) > 180
        xs = np.stack([lon[a], lon[b], np.full(len(a), np.nan)], axis=1)[~wrap].ravel()
        ys = np.stack([lat[a], lat[b], np.full(len(a), np.nan)], axis=1)[~wrap].ravel()
        ax.plot(xs, ys, "-", color="#9ab", lw=0.4, label="ISL up")
        ax.plot(lon, lat, ".", color="#357", ms=2, label="satellite")
        glat = [tl.nodes[g].info.get("lat_deg", 0) for g in gws]
        glon = [tl.nodes[g].info.get("lon_deg", 0) for g in gws]
        ax.plot(glon, glat, "^", color="green", ms=6, label="gateway")
        node_ll = {int(s): (lon[i], lat[i]) for i, s in enumerate(sats)}
        for g, y, x in zip(gws, glat, glon):
            node_ll[g] = (x, y)
        terms = tl.nodes_of("terminal")
        if terms:
            tlat = [tl.nodes[t].info.get("lat_deg", 0) for t in terms]
            tlon = [tl.nodes[t].info.get("lon_deg", 0) for t in terms]
            ax.plot(tlon, tlat, "o", color="darkorange", ms=5, label="user terminal")
            for t, y, x in zip(terms, tlat, tlon):
                node_ll[t] = (x, y)
        pops = tl.nodes_of("pop")
        if pops:
            plat = [tl.nodes[p].info.get("lat_deg", 0) for p in pops]
            plon = [tl.nodes[p].info.get("lon_deg", 0) for p in pops]
            ax.plot(plon, plat, "s", color="purple", ms=3.5, label="PoP")
            for p, y, x in zip(pops, plat, plon):
                node_ll[p] = (x, y)
        for h in tl.nodes_of("host"):
            gw = tl.nodes[h].info.get("gateway")
            if gw:
                node_ll[h] = node_ll.get(tl.node_index(gw), (0, 0))
        for c in tl.nodes_of("compute"):
            s = tl.nodes[c].info.get("satellite")
            if s:
                node_ll[c] = node_ll.get(tl.node_index(s), (0, 0))
        for i, (src, dst) in enumerate(pairs):
            try:
                nodes = path_nodes(tl, tl.node_index(src), tl.node_index(dst), step)
            except Exception as e:  # a path that cannot be drawn must not stop the other plots
                log.warning("no path drawn for %s -> %s: %s", src, dst, e)
                continue
            pts = np.array([node_ll[n] for n in nodes if n in node_ll])
            if len(pts):
                seg_x, seg_y = [], []
                for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
                    if abs(x0 - x1) <= 180:
                        seg_x += [x0, x1, np.nan]
                        seg_y += [y0, y1, np.nan]
                ax.plot(seg_x, seg_y, "-", lw=2.2, color=f"C{(i + 3) % 10}", label=f"path {src} -> {dst}")
        ax.set_xlim(-180, 180)
        ax.set_ylim(-90, 90)
        ax.set_xlabel("longitude (deg)")
        ax.set_ylabel("latitude (deg)")
        ax.set_title(f"t = {step * tl.step_s:g} s ({tl.time_of(step).strftime('%Y-%m-%d %H:%M:%S')} UTC)")
        ax.legend(loc="lower left", fontsize=7)
        paths += _save(fig, folder, f"map_t{int(step * tl.step_s):05d}")
        plt.close(fig)
    return paths


#: the most loaded links the summary lists
TOP_LINKS = 10


def link_load(path: Path, tl: Timeline, played: int, plots: Path,
              invalid_s: np.ndarray | None = None) -> tuple[dict[str, Any], list[Path]]:
    """Per-link utilisation from ``linkload.csv`` (:mod:`emulator.linkload`): the most loaded link
    directions (by their peak utilisation over the steps), links that carried anything, and a map shading
    each link by its utilisation at the step with the most bytes in flight."""
    from .linkload import link_utilisation

    mbps, util = link_utilisation(path, tl.rate_mbps, played)
    peak = np.nan_to_num(util, nan=0.0).max(axis=2)  # (links, 2)
    order = np.argsort(-peak, axis=None, kind="stable")[:TOP_LINKS]
    top = []
    for f in order.tolist():
        link, side = divmod(f, 2)
        if peak[link, side] <= 0:
            break
        step = int(np.nanargmax(np.nan_to_num(util[link, side], nan=-1.0)))
        a, b = int(tl.link_a[link]), int(tl.peer[link, step])
        src, dst = (a, b) if side == 0 else (b, a)
        top.append({"link": link, "direction": "a->b" if side == 0 else "b->a",
                    "class": LINK_CLASSES[int(tl.link_class[link])],
                    "from": tl.nodes[src].name if src >= 0 else "?", "to": tl.nodes[dst].name if dst >= 0 else "?",
                    "peak_utilisation_pct": round(100 * float(peak[link, side]), 1), "peak_step": step,
                    "peak_mbps": round(float(mbps[link, side, step]), 3),
                    "rate_mbps": float(tl.rate_mbps[link, step]),
                    "mean_mbps": round(float(mbps[link, side].mean()), 3)})
    busiest = int(np.argmax(mbps.sum(axis=(0, 1)))) if played else 0
    out = {"links_carrying": int(np.count_nonzero(mbps.any(axis=(1, 2)))), "top": top,
           "total_mbps_by_step": np.round(mbps.sum(axis=(0, 1)), 3).tolist(), "map_step": busiest}
    files = plot_load_map(tl, plots, busiest, np.nan_to_num(util[:, :, busiest], nan=0.0).max(axis=1))
    files += plot_link_load(util, top[:6], tl.step_s, plots, scheduled_s(tl, played * tl.step_s), invalid_s)
    return out, files


def plot_link_load(util: np.ndarray, top: list[dict[str, Any]], step_s: float, folder: Path,
                   events_s: np.ndarray, invalid_s: np.ndarray | None = None) -> list[Path]:
    """Utilisation over time of the most loaded link directions (``top``, as :func:`link_load` lists them),
    scheduled events marked, invalid intervals shaded."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 3))
    _mark_scheduled(ax, events_s)
    _shade_invalid(ax, invalid_s)
    t = np.arange(util.shape[2]) * step_s
    for entry in top:
        side = 0 if entry["direction"] == "a->b" else 1
        ax.step(t, 100 * util[entry["link"], side], where="post",
                label=f"{entry['class']} {entry['from']} -> {entry['to']}")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("utilisation (%)")
    ax.set_ylim(-2, 110)
    if top:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    paths = _save(fig, folder, "link_load")
    plt.close(fig)
    return paths


def plot_load_map(tl: Timeline, folder: Path, step: int, util: np.ndarray) -> list[Path]:
    """Links (ISL, GSL) drawn at ``step``'s positions, coloured by utilisation (0-100 %, the larger of the
    two directions): the map of where the load sits."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    from .basemap import draw_basemap

    fig, ax = plt.subplots(figsize=(11, 5.6))
    draw_basemap(ax)
    lla = tl.sat_lla[:, step, :]
    pos: dict[int, tuple[float, float]] = {}
    for i, s in enumerate(tl.nodes_of("sat")):
        pos[int(s)] = (((lla[i, 1] + 180) % 360) - 180, lla[i, 0])
    for k in ("gateway", "terminal", "pop"):
        for g in tl.nodes_of(k):
            info = tl.nodes[g].info
            pos[int(g)] = (float(info.get("lon_deg", 0.0)), float(info.get("lat_deg", 0.0)))
    segs, vals = [], []
    for l in np.flatnonzero((tl.state[:, step] == Reason.UP) & (tl.peer[:, step] >= 0)).tolist():
        a, b = int(tl.link_a[l]), int(tl.peer[l, step])
        if a in pos and b in pos and abs(pos[a][0] - pos[b][0]) <= 180:
            segs.append([pos[a], pos[b]])
            vals.append(float(util[l]))
    idle = [segs[i] for i in range(len(segs)) if vals[i] <= 0]
    ax.add_collection(LineCollection(idle, colors="#b8c4cc", linewidths=0.4, label="link, no load"))
    order = [i for i in np.argsort(vals).tolist() if vals[i] > 0]  # most loaded drawn last, on top
    lc = LineCollection([segs[i] for i in order], cmap="inferno_r", linewidths=[0.8 + 2.2 * min(1.0, vals[i])
                                                                                 for i in order])
    lc.set_array(np.clip(100 * np.array([vals[i] for i in order], float), 0, 100))
    lc.set_clim(0, 100)
    ax.add_collection(lc)
    fig.colorbar(lc, ax=ax, fraction=0.03, pad=0.01, label="utilisation (%)")
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_xlabel("longitude (deg)")
    ax.set_ylabel("latitude (deg)")
    ax.set_title(f"link load at t = {step * tl.step_s:g} s (the step with the most bytes carried)")
    paths = _save(fig, folder, "map_load")
    plt.close(fig)
    return paths


def lateness(folder: Path) -> dict[str, Any] | None:
    """Step lateness (ms) from steps.csv: how late each step was fully applied."""
    path = folder / "steps.csv"
    if not path.is_file():
        return None
    late, app = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                late.append(float(row["late_ms"]))
                app.append(float(row["apply_ms"]))
            except (KeyError, TypeError, ValueError):
                break
    if not late:
        return {"steps": 0}
    la, ap = np.array(late), np.array(app)
    return {"steps": len(la), "late_ms_median": float(np.median(la)), "late_ms_p95": float(np.percentile(la, 95)),
            "late_ms_max": float(la.max()), "apply_ms_median": float(np.median(ap)),
            "apply_ms_p95": float(np.percentile(ap, 95))}


def played_steps(folder: Path, tl: Timeline | None) -> int:
    """How many steps of the timeline the run got through (all of them if unknown)."""
    n = tl.n_steps if tl is not None else 0
    path = folder / "steps.csv"
    if path.is_file():
        last = 0
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    last = max(last, int(row["step"]))
                except (KeyError, ValueError):
                    break  # a line cut short by an interrupted run
        return max(1, min(n, last + 1)) if n else last + 1
    return n


def report(folder: str | Path, map_at_s: list[float] | None = None) -> dict[str, Any]:
    """Rebuild ``summary.json`` (probe statistics) and every plot of a results folder."""
    import matplotlib

    matplotlib.use("Agg")
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError("results folder not found", file=str(folder))
    if not (folder / "scenario.json").is_file():
        # report writes summary.json and plots/ into the folder: only into one that 'satnetem run' made
        # (scenario.json is the first file a run writes)
        raise ConfigError("not a results folder of 'satnetem run' (it has no scenario.json); nothing written",
                          file=str(folder))
    summary: dict[str, Any] = {}
    sp = folder / "summary.json"
    if sp.is_file():
        try:
            summary = json.loads(sp.read_text())
        except json.JSONDecodeError as e:
            log.warning("summary.json unreadable (%s): rebuilding it", e)
    tl = None
    if (folder / "timeline.npz").is_file():
        tl = Timeline.load(folder / "timeline.npz")
    samples, flows = build_samples(folder, tl) if tl is not None else ({}, [])
    summary["flows"] = flows
    summary.pop("probes", None)
    errs = [abs(f["error_ms"]["p50"]) for f in flows if f.get("error_ms", {}).get("p50") is not None]
    preds = [f["predicted_ms"]["p50"] for f in flows if f.get("error_ms", {}).get("p50") is not None]
    if errs:
        worst = int(np.argmax([e / max(1.0, 0.03 * p) for e, p in zip(errs, preds)]))
        summary["delay_error"] = {"worst_abs_p50_ms": errs[worst], "of_predicted_p50_ms": preds[worst],
                                  "bound_ms": max(1.0, 0.03 * preds[worst]),
                                  "within_bound": errs[worst] <= max(1.0, 0.03 * preds[worst])}
    if tl is not None:
        played = played_steps(folder, tl)
        gsl = tl.link_class == LINK_CLASSES.index("gsl")
        peer = tl.peer[gsl, :played]
        summary["handovers"] = int(np.sum(peer[:, 1:] != peer[:, :-1]))
        isl = tl.link_class == LINK_CLASSES.index("isl")
        st = tl.state[isl, :played]
        summary["isl_outages"] = int(np.sum((st[:, 1:] == Reason.OUTAGE) & (st[:, :-1] != Reason.OUTAGE)))
    summary["lateness"] = lateness(folder) or summary.get("lateness")
    summary.pop("recovery", None)
    if tl is not None and tl.report.get("events") and samples:
        from .recovery import event_recovery

        run = _load_json(folder / "run.json", {})
        summary["recovery"] = event_recovery(tl.report["events"], samples, tl.step_s, played_steps(folder, tl),
                                             float(run.get("speed", 1.0)))
    plots = folder / "plots"
    plots.mkdir(exist_ok=True)
    written: list[Path] = []
    played = played_steps(folder, tl)
    summary.pop("validity", None)
    run = load_run(folder)
    invalid_u = None
    if run and tl is not None:
        from .validity import merged, summarise

        invalid, bounds, checked = run_validity(folder, run, tl.step_s)
        invalid_u = merged(invalid)
        every = [s["valid"] for s in samples.values()]
        summary["validity"] = summarise(invalid, bounds, checked, played * tl.step_s,
                                        np.concatenate(every) if every else np.array([], bool))
    if samples:
        written += plot_rtt(samples, tl, plots, played * tl.step_s if tl is not None else None, invalid_u)
        written += plot_loss(samples, plots, events_s=scheduled_s(tl, played * tl.step_s if tl is not None else None),
                             invalid_s=invalid_u)
        written += plot_error_cdf(samples, plots)
    events_s = scheduled_s(tl, played * tl.step_s if tl is not None else None)
    written += plot_allreduce(flows, plots, tl, run, events_s, invalid_u)
    summary.pop("compute_availability", None)
    if tl is not None:
        written += plot_requests(folder, tl, run, flows, plots, events_s, invalid_u)
        avail = compute_availability(tl, played, folder)
        if avail is not None:
            summary["compute_availability"] = avail
            written += plot_availability(tl, played, plots, events_s=events_s)
    if tl is not None:
        pairs = list(dict.fromkeys((f["src"], f["dst"]) for f in flows if f.get("dst")))
        if map_at_s:
            bad = [t for t in map_at_s if not 0 <= t < played * tl.step_s]
            if bad:
                raise ConfigError(f"map times {bad} are outside the run (0 to {played * tl.step_s:g} s)",
                                  key="--map-at")
            steps = sorted({int(t / tl.step_s) for t in map_at_s})
        else:
            steps = sorted({0, played // 2, played - 1})
        for old in plots.glob("map_t*.*"):  # maps of other times, from an earlier report
            old.unlink()
        written += plot_map(tl, plots, steps, [p for p in pairs if len(p) == 2])
    summary.pop("link_load", None)
    if tl is not None and (folder / "linkload.csv").is_file():
        load, files = link_load(folder / "linkload.csv", tl, played, plots, invalid_u)
        summary["link_load"] = load
        written += files
    summary["plots"] = [str(p.relative_to(folder)) for p in written]
    sp.write_text(json.dumps(summary, indent=2))
    return summary
