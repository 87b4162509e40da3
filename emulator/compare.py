"""``satnetem compare``: the same timeline and traffic under several routing protocols, side by side.

Each protocol gets a full run (its own results folder under the comparison folder); then the figures
a routing researcher compares are pulled from those folders: route computation and installation time
per step, route changes, packets lost around each handover and outage (and how long traffic took to
recover), path stretch (measured delay over the best possible one), and the delay error.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np

from topologies.errors import ConfigError
from topologies.timeline import LINK_CLASSES, Reason, Timeline

log = logging.getLogger(__name__)

#: probes lost within this many seconds after an event count as lost "around" it
EVENT_WINDOW_S = 3.0


def event_times(tl: Timeline, steps: int) -> list[tuple[float, str]]:
    """(time s, what) of GSL handovers and of ISL links going down for a pointing outage."""
    out: list[tuple[float, str]] = []
    gsl = np.flatnonzero(tl.link_class == LINK_CLASSES.index("gsl"))
    peer = tl.peer[gsl, :steps]
    for k in np.flatnonzero(np.any(peer[:, 1:] != peer[:, :-1], axis=0)) + 1:
        out.append((float(k * tl.step_s), "handover"))
    isl = tl.link_class == LINK_CLASSES.index("isl")
    st = tl.state[isl, :steps]
    for k in np.flatnonzero(np.any((st[:, 1:] == Reason.OUTAGE) & (st[:, :-1] != Reason.OUTAGE), axis=0)) + 1:
        out.append((float(k * tl.step_s), "outage"))
    return sorted(out)


def losses_around_events(samples_csv: Path, events: list[tuple[float, str]]) -> dict[str, Any]:
    """Probes lost within :data:`EVENT_WINDOW_S` after each event, and time to the next answer."""
    rows: dict[str, list[tuple[float, bool]]] = {}
    if samples_csv.is_file():
        with open(samples_csv, newline="") as f:
            for r in csv.DictReader(f):
                try:
                    rows.setdefault(r["flow"], []).append((float(r["t_s"]), r["measured_ms"] != ""))
                except (KeyError, ValueError):
                    break
    per_event = []
    for t_ev, what in events:
        lost = 0
        recovery = []
        for rs in rows.values():
            window = [(t, ok) for t, ok in rs if t_ev <= t < t_ev + EVENT_WINDOW_S]
            lost += sum(1 for _, ok in window if not ok)
            first_lost = next((t for t, ok in window if not ok), None)
            if first_lost is not None:
                back = next((t for t, ok in rs if t > first_lost and ok), None)
                if back is not None:
                    recovery.append((back - t_ev) * 1e3)
        per_event.append({"t_s": t_ev, "event": what, "lost": lost,
                          "recovery_ms": max(recovery) if recovery else 0.0})
    return {"events": per_event, "lost_total": sum(e["lost"] for e in per_event)}


def route_times(steps_csv: Path) -> dict[str, Any]:
    ms, changes = [], 0
    if steps_csv.is_file():
        with open(steps_csv, newline="") as f:
            for r in csv.DictReader(f):
                try:
                    ms.append(float(r.get("routes_ms") or "nan"))
                    changes += int(r.get("routes_changed") or 0)
                except ValueError:
                    break
    a = np.array(ms, float)
    a = a[np.isfinite(a)]
    return {"route_ms_median": float(np.median(a)) if len(a) else None,
            "route_ms_p95": float(np.percentile(a, 95)) if len(a) else None, "route_changes": changes}


def summarise_protocol(folder: Path) -> dict[str, Any]:
    """The comparison figures of one run's results folder."""
    summary = json.loads((folder / "summary.json").read_text())
    tl = Timeline.load(folder / "timeline.npz")
    played = summary.get("lateness", {}).get("steps", tl.n_steps - 1) + 1
    events = event_times(tl, min(played, tl.n_steps))
    out: dict[str, Any] = {"protocol": summary.get("protocol"), "complete": summary.get("complete")}
    out.update(route_times(folder / "steps.csv"))
    out.update(losses_around_events(folder / "samples.csv", events))
    stretch = [f["stretch"]["p50"] for f in summary.get("flows", [])
               if f.get("stretch", {}).get("p50") is not None]
    lost = sum(f.get("lost", 0) for f in summary.get("flows", []) if f["kind"] in ("ping", "udp-probe"))
    sent = sum(f.get("sent", 0) for f in summary.get("flows", []) if f["kind"] in ("ping", "udp-probe"))
    out["stretch_p50"] = float(np.mean(stretch)) if stretch else None
    out["probes_sent"], out["probes_lost"] = sent, lost
    out["delay_error"] = summary.get("delay_error")
    return out


def compare(args: argparse.Namespace) -> int:
    """Run the scenario once per protocol; print one table; write compare.json and plots/compare.png."""
    from datetime import datetime

    from routing.base import get_protocol
    from topologies.scenario import default_scenario, load_scenario

    from .runner import run

    names = [p.strip() for p in args.protocols.split(",") if p.strip()]
    if len(names) < 1:
        raise ConfigError("--protocols needs at least one protocol name")
    for n in names:
        get_protocol(n)  # unknown names fail here, before anything is built
    sc = load_scenario(args.scenario) if args.scenario else default_scenario()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    top = Path(args.results) if args.results else Path("results") / f"{stamp}-{sc.name}-compare"
    top.mkdir(parents=True, exist_ok=True)
    if args.timeline is None:
        from topologies.plan import plan_scenario

        timeline_path = top / "timeline.npz"
        plan_scenario(sc).save(timeline_path)
    else:
        timeline_path = Path(args.timeline)
    rows = []
    for n in names:
        sub = copy.copy(args)
        sub.protocol = n
        sub.timeline = str(timeline_path)
        sub.results = str(top / n)
        sub.scenario = args.scenario
        print(f"=== {n} ===", flush=True)
        status = run(sub)
        row = summarise_protocol(top / n)
        rows.append(row)
        if status != 0:
            break
    (top / "compare.json").write_text(json.dumps(rows, indent=2))
    print_table(rows)
    plot_compare(rows, top)
    print(f"comparison: {top / 'compare.json'}, {top / 'plots' / 'compare.png'}")
    return 0


def _f(v: Any, nd: int = 1) -> str:
    return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ("protocol", "routes ms p50", "p95", "route changes", "lost/sent", "lost at events",
            "max recovery ms", "stretch p50")
    print("  ".join(f"{h:>14}" for h in head))
    for r in rows:
        rec = max((e["recovery_ms"] for e in r["events"]), default=0.0)
        cells = (r["protocol"], _f(r["route_ms_median"]), _f(r["route_ms_p95"]), _f(r["route_changes"]),
                 f"{r['probes_lost']}/{r['probes_sent']}", _f(r["lost_total"]), _f(rec, 0), _f(r["stretch_p50"], 3))
        print("  ".join(f"{c:>14}" for c in cells))


def plot_compare(rows: list[dict[str, Any]], top: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["protocol"] for r in rows]
    metrics = (("route_ms_median", "route compute+install per step (ms, median)"),
               ("lost_total", "probes lost around handovers/outages"),
               ("stretch_p50", "path stretch (measured / best delay, p50)"),
               ("route_changes", "route changes"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4))
    for ax, (key, title) in zip(axes, metrics):
        vals = [r.get(key) if r.get(key) is not None else 0 for r in rows]
        ax.bar(names, vals, color=[f"C{i}" for i in range(len(names))])
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    (top / "plots").mkdir(exist_ok=True)
    for ext in ("png", "svg"):
        fig.savefig(top / "plots" / f"compare.{ext}", dpi=110)
    plt.close(fig)
