"""``satnetem compare``: the same timeline and traffic under several routing protocols, side by side.

Each protocol gets a full run (its own results folder under the comparison folder); then the figures
a routing researcher compares are pulled from those folders: probe loss overall and after convergence,
RTT p50/p95/p99, the time the protocol took to converge, route computation and installation time per
step, route changes, packets lost around each handover and outage (and how long traffic took to
recover), path stretch (measured delay over the best possible one), and the delay error.

Convergence is measured from outside the routers, on the probes alone (``samples.csv``), so it means
the same for a centralised protocol and for daemons such as OSPF: a protocol has converged at the send
time of the first probe that opens a :data:`CONVERGED_WINDOW_S` stretch in which every probe of every
ping and udp-probe flow arrived and at least :data:`CLEAN_FRACTION` of them with the measured delay
within the emulator's bound of the predicted one (``max(1 ms, 3 %)``, as the run summary's delay
error). The time is counted from the start of playback, i.e. from the moment ``build()`` returned
with every daemon started. A daemon-driven protocol whose probes never open such a stretch has not
converged (a centralised one: the emulation missed its delays); one whose probes never arrived carried
no traffic. Convergence is not the end of the judgement: a protocol whose probes, from its convergence
on, mostly miss the bound (:data:`CLEAN_FRACTION`, on the worst flow) has delays off after all, and a
run whose steps were applied more than one step late on the 95th percentile did not follow its
timeline (the loaded machine, not the protocol, then shapes the figures). Each is flagged
(:func:`flags`) in the table, in ``compare.json`` and on the plot, and makes ``compare`` exit with
status 1.
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
#: a protocol has converged once each flow's probes all arrived, mostly within the delay bound, for this
#: long, s: long enough to span several OSPF hello intervals and a few hundred probes at the campaign's rates
CONVERGED_WINDOW_S = 5.0
#: ... in which every probe arrived and at least this share of them within the bound: the median, as the
#: run summary judges delay; the tail is reported beside it (p95/p99), and the emulator's p95 does not yet
#: hold the bound on every flow (a 95 % rule flagged healthy campaign runs whose p50 error was 0.7 ms)
CLEAN_FRACTION = 0.5
#: the emulator's delay bound: |measured - predicted| <= max(BOUND_MS, BOUND_PCT % of predicted)
BOUND_MS = 1.0
BOUND_PCT = 3.0


def event_times(tl: Timeline, steps: int) -> list[tuple[float, str]]:
    """(time s, what) of GSL handovers, of ISL links going down for a pointing outage, and of the steps at
    which scheduled events ([[events]]) take effect ("fail <target>", ...)."""
    out: list[tuple[float, str]] = []
    gsl = np.flatnonzero(tl.link_class == LINK_CLASSES.index("gsl"))
    peer = tl.peer[gsl, :steps]
    for k in np.flatnonzero(np.any(peer[:, 1:] != peer[:, :-1], axis=0)) + 1:
        out.append((float(k * tl.step_s), "handover"))
    isl = tl.link_class == LINK_CLASSES.index("isl")
    st = tl.state[isl, :steps]
    for k in np.flatnonzero(np.any((st[:, 1:] == Reason.OUTAGE) & (st[:, :-1] != Reason.OUTAGE), axis=0)) + 1:
        out.append((float(k * tl.step_s), "outage"))
    for ev in tl.report.get("events", []):
        for o in ev["occurrences"]:
            if o["end_step"] is not None and 0 < o["step"] < steps:
                out.append((float(o["step"] * tl.step_s), f"{ev['kind']} {ev['target']}"))
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


def read_probe_samples(samples_csv: Path) -> dict[str, dict[str, np.ndarray]]:
    """The ping and udp-probe samples of a results folder's ``samples.csv``, per flow.

    Returns
    -------
    dict
        ``{flow: {"metric": "rtt" | "one_way", "t_s", "measured_ms", "predicted_ms"}}``, arrays of shape
        (n_samples,) sorted by send time (s after playback started); a lost probe has a NaN measurement.
    """
    cols: dict[str, dict[str, Any]] = {}
    if samples_csv.is_file():
        with open(samples_csv, newline="") as f:
            for r in csv.DictReader(f):
                if r.get("kind") not in ("ping", "udp-probe"):
                    continue
                try:
                    t = float(r["t_s"])
                    m = float(r["measured_ms"]) if r["measured_ms"] else np.nan
                    pr = float(r["predicted_ms"]) if r["predicted_ms"] else np.nan
                except (KeyError, ValueError):
                    continue
                c = cols.setdefault(r["flow"], {"metric": r.get("metric", ""), "t": [], "m": [], "p": []})
                c["t"].append(t)
                c["m"].append(m)
                c["p"].append(pr)
    out = {}
    for flow, c in cols.items():
        order = np.argsort(np.asarray(c["t"], float), kind="stable")
        out[flow] = {"metric": c["metric"], "t_s": np.asarray(c["t"], float)[order],
                     "measured_ms": np.asarray(c["m"], float)[order],
                     "predicted_ms": np.asarray(c["p"], float)[order]}
    return out


def within_bound(measured_ms: np.ndarray, predicted_ms: np.ndarray) -> np.ndarray:
    """Per probe: it arrived, and where a prediction exists its delay is within the bound of it."""
    m = np.asarray(measured_ms, float)
    pr = np.asarray(predicted_ms, float)
    bound = np.maximum(BOUND_MS, pr * (BOUND_PCT / 100.0))
    with np.errstate(invalid="ignore"):
        close = np.abs(m - pr) <= bound
    return np.isfinite(m) & (close | ~np.isfinite(pr))


def convergence_s(t_s: np.ndarray, good: np.ndarray, arrived: np.ndarray | None = None,
                  window_s: float = CONVERGED_WINDOW_S, fraction: float = CLEAN_FRACTION) -> float | None:
    """Send time of the first probe that opens a clean ``window_s`` stretch: every probe in it arrived
    and at least ``fraction`` of them within the bound.

    Parameters
    ----------
    t_s : ndarray, shape (n,)
        Send times of every probe of every flow, s, sorted.
    good : ndarray of bool, shape (n,)
        Whether each probe arrived within the bound (:func:`within_bound`).
    arrived : ndarray of bool, shape (n,), optional
        Whether each probe arrived at all (default: ``good``).
    window_s : float
        Length of the stretch, s; it must end before the last probe was sent (a run too short to show
        ``window_s`` of clean probes has not shown convergence).
    fraction : float
        Share of the stretch's probes that must be within the bound: a healthy emulation has a tail,
        so "every probe" would never hold (see :data:`CLEAN_FRACTION`).

    Returns
    -------
    float or None
        Seconds after playback started; None: never converged.

    >>> convergence_s(np.arange(10.0), np.array([0, 0, 1, 0, 1, 1, 1, 1, 1, 1], bool), window_s=3.0)
    4.0
    """
    t = np.asarray(t_s, float)
    g = np.asarray(good, bool)
    a = g if arrived is None else np.asarray(arrived, bool)
    if len(t) == 0:
        return None
    cg = np.concatenate([[0], np.cumsum(g)])
    ca = np.concatenate([[0], np.cumsum(a)])
    end = np.searchsorted(t, t + window_s, side="left")  # window i is probes i .. end[i] - 1
    n = end - np.arange(len(t))
    ok = ((ca[end] - ca[:-1]) == n) & ((cg[end] - cg[:-1]) >= fraction * n) & (t + window_s <= t[-1])
    first = np.flatnonzero(ok)
    return float(t[first[0]]) if len(first) else None


def probe_figures(samples: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Loss, RTT quantiles and convergence of one run, from its probe samples (:func:`read_probe_samples`).

    Returns
    -------
    dict
        ``sent``, ``received``, ``loss_pct`` (all probes); ``rtt_ms`` and ``one_way_ms``: p50/p95/p99 and
        count of the arrived ping RTTs and udp-probe one-way delays, ms (None without samples);
        ``converged_s`` (:func:`convergence_s`, None: never), and ``after_sent``, ``after_lost``,
        ``loss_after_pct`` of the probes sent from then on; ``in_bound_after_pct``: of each flow's probes
        sent from then on, the share that arrived within the delay bound (:func:`within_bound`), on the
        worst flow (None: never converged).
    """
    out: dict[str, Any] = {}
    if samples:
        t = np.concatenate([s["t_s"] for s in samples.values()])
        m = np.concatenate([s["measured_ms"] for s in samples.values()])
        pr = np.concatenate([s["predicted_ms"] for s in samples.values()])
    else:
        t = m = pr = np.empty(0)
    order = np.argsort(t, kind="stable")
    t, m, pr = t[order], m[order], pr[order]
    arrived = np.isfinite(m)
    out["sent"], out["received"] = int(len(t)), int(arrived.sum())
    out["loss_pct"] = 100.0 * (1.0 - arrived.mean()) if len(t) else None
    for key, metric in (("rtt_ms", "rtt"), ("one_way_ms", "one_way")):
        v = np.concatenate([s["measured_ms"] for s in samples.values() if s["metric"] == metric] or [np.empty(0)])
        v = v[np.isfinite(v)]
        out[key] = ({"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)),
                     "p99": float(np.percentile(v, 99)), "count": int(len(v))} if len(v) else None)
    # converged once every flow has: a flow far off its prediction is not hidden by the others' probes
    per_flow = []
    flow_good = []
    for fs in samples.values():
        o = np.argsort(fs["t_s"], kind="stable")
        ft, fm, fp = fs["t_s"][o], fs["measured_ms"][o], fs["predicted_ms"][o]
        good = within_bound(fm, fp)
        flow_good.append((ft, good))
        per_flow.append(convergence_s(ft, good, np.isfinite(fm)))
    conv = None if not per_flow or any(c is None for c in per_flow) else max(c for c in per_flow if c is not None)
    out["converged_s"] = conv
    if conv is None:
        out["after_sent"] = out["after_lost"] = 0
        out["loss_after_pct"] = out["in_bound_after_pct"] = None
    else:
        after = t >= conv
        out["after_sent"] = int(after.sum())
        out["after_lost"] = int((after & ~arrived).sum())
        out["loss_after_pct"] = 100.0 * out["after_lost"] / out["after_sent"]
        # one clean window early on says nothing about the rest of the run (an OSPF run on a loaded
        # machine opened one at 0.5 s, then had 80 % of one flow's probes outside the bound)
        shares = [100.0 * float(g[ft >= conv].mean()) for ft, g in flow_good if np.any(ft >= conv)]
        out["in_bound_after_pct"] = min(shares) if shares else None
    return out


def flags(row: dict[str, Any]) -> list[str]:
    """What is wrong with one protocol's run, worst first; empty when it ran, carried traffic and converged.

    ``NOT-CONVERGED``: a daemon-driven protocol (``row["daemon"]``) whose probes never opened a clean
    stretch (:func:`convergence_s`). A centralised protocol's routes are installed before playback, so
    there the same finding says the emulation itself missed its delays (a loaded machine, late steps):
    ``DELAYS-OFF``. ``DELAYS-OFF`` also when the protocol converged but, from then on, fewer than
    :data:`CLEAN_FRACTION` of a flow's probes arrived within the bound (``in_bound_after_pct``).
    ``LATE``: the run's steps were applied more than one step late on the 95th percentile
    (``row["late_ms_p95"]`` against ``row["step_s"]``): the network did not follow its timeline.

    >>> flags({"complete": True, "daemon": True, "probes": {"sent": 10, "received": 0, "converged_s": None}})
    ['NO-TRAFFIC', 'NOT-CONVERGED']
    """
    out = []
    if not row.get("complete"):
        out.append("INTERRUPTED")
    p = row.get("probes") or {}
    if not p.get("received"):
        out.append("NO-TRAFFIC")
    if p.get("converged_s") is None:
        out.append("NOT-CONVERGED" if row.get("daemon") else "DELAYS-OFF")
    elif p.get("in_bound_after_pct") is not None and p["in_bound_after_pct"] < 100.0 * CLEAN_FRACTION:
        out.append("DELAYS-OFF")
    late, step_s = row.get("late_ms_p95"), row.get("step_s")
    if late is not None and step_s is not None and late > 1e3 * step_s:
        out.append("LATE")
    return out


def summarise_protocol(folder: Path) -> dict[str, Any]:
    """The comparison figures of one run's results folder."""
    summary = json.loads((folder / "summary.json").read_text())
    tl = Timeline.load(folder / "timeline.npz")
    played = summary.get("lateness", {}).get("steps", tl.n_steps - 1) + 1
    events = event_times(tl, min(played, tl.n_steps))
    out: dict[str, Any] = {"protocol": summary.get("protocol"), "complete": summary.get("complete"),
                           "build_s": summary.get("build_s")}
    try:
        from routing.base import get_protocol

        out["daemon"] = getattr(get_protocol(str(out["protocol"])), "kind", "") == "daemon"
    except ConfigError:  # a plugin no longer installed: its folder is still read
        out["daemon"] = None
    out.update(route_times(folder / "steps.csv"))
    if out["daemon"]:  # the daemons compute their routes; the steps' routes column times nothing for them
        out["route_ms_median"] = out["route_ms_p95"] = out["route_changes"] = None
    out["step_s"] = summary.get("step_s", tl.step_s)
    out["late_ms_p95"] = summary.get("lateness", {}).get("late_ms_p95")
    out.update(losses_around_events(folder / "samples.csv", events))
    stretch = [f["stretch"]["p50"] for f in summary.get("flows", [])
               if f.get("stretch", {}).get("p50") is not None]
    lost = sum(f.get("lost", 0) for f in summary.get("flows", []) if f["kind"] in ("ping", "udp-probe"))
    sent = sum(f.get("sent", 0) for f in summary.get("flows", []) if f["kind"] in ("ping", "udp-probe"))
    out["stretch_p50"] = float(np.mean(stretch)) if stretch else None
    out["probes_sent"], out["probes_lost"] = sent, lost
    out["delay_error"] = summary.get("delay_error")
    # the share of samples taken while the machine kept up (emulator.validity): a protocol whose daemons
    # load the machine makes its own measurements less trustworthy, and this says by how much
    validity = summary.get("validity") or {}
    out["valid_pct"] = validity.get("valid_pct")
    out["valid_samples"], out["samples"] = validity.get("valid_samples"), validity.get("samples")
    out["recovery"] = summary.get("recovery") or []
    out["probes"] = probe_figures(read_probe_samples(folder / "samples.csv"))
    out["flags"] = flags(out)
    return out


def compare(args: argparse.Namespace) -> int:
    """Run the scenario once per protocol; print one table; write compare.json and plots/compare.png."""
    from datetime import datetime

    from routing.base import get_protocol, scenario_protocol
    from topologies.scenario import default_scenario, load_scenario

    from .runner import run

    names = [p.strip() for p in args.protocols.split(",") if p.strip()]
    if len(names) < 1:
        raise ConfigError("--protocols needs at least one protocol name")
    for n in names:
        get_protocol(n)  # unknown names fail here, before anything is built
    sc = load_scenario(args.scenario) if args.scenario else default_scenario()
    for n in names:  # and bad [routing.<name>] options, before the first protocol's run
        scenario_protocol(sc, n)
    run_id = getattr(args, "run_id", None)
    run_ids: dict[str, str | None] = {n: None if run_id is None else f"{run_id}-{n}" for n in names}
    if run_id is not None:
        from .clean import RUN_ID_RE

        for n in names:
            rid = f"{run_id}-{n}"
            if not RUN_ID_RE.fullmatch(rid):
                raise ConfigError(f"run id {rid!r} for protocol {n!r} must be lower-case letters, digits and '-' "
                                  f"(at most 41, starting with a letter or digit)", key="--run-id")
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
        sub.run_id = run_ids[n]
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
    plot_compare(rows, top, {r["protocol"]: read_probe_samples(top / n / "samples.csv")
                             for r, n in zip(rows, names)})
    if any(r.get("recovery") for r in rows):
        plot_recovery(rows, top)
    print(f"comparison: {top / 'compare.json'}, {top / 'plots' / 'compare.png'}")
    bad = [f"{r['protocol']} ({', '.join(r['flags'])})" for r in rows if r["flags"]]
    if len(rows) < len(names):
        bad.append(f"not run: {', '.join(names[len(rows):])}")
    if bad:
        print(f"comparison FLAGGED: {'; '.join(bad)}")
        return 1
    return 0


def _f(v: Any, nd: int = 1) -> str:
    return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def _q(d: dict[str, Any] | None, key: str) -> float | None:
    return None if not d else d.get(key)


def format_table(rows: list[dict[str, Any]]) -> list[str]:
    """The printed comparison: delivery (status, convergence, loss, delay quantiles), then routing."""
    lines = []
    head = ("protocol", "status", "converged s", "loss %", "loss after %", "in bound after %", "valid %",
            "RTT p50 ms", "p95", "p99", "one-way p50", "p95", "p99")
    w = [max(13, len(h)) for h in head]
    w[1] = max([6] + [len(",".join(r.get("flags") or [])) for r in rows])
    lines.append("  ".join(f"{h:>{n}}" for h, n in zip(head, w)))
    for r in rows:
        p = r.get("probes") or {}
        rtt, ow = p.get("rtt_ms"), p.get("one_way_ms")
        status = ",".join(r.get("flags") or []) or "ok"
        cells = (r["protocol"], status, _f(p.get("converged_s")), _f(p.get("loss_pct"), 2),
                 _f(p.get("loss_after_pct"), 2), _f(p.get("in_bound_after_pct"), 1), _f(r.get("valid_pct"), 1),
                 _f(_q(rtt, "p50"), 2),
                 _f(_q(rtt, "p95"), 2), _f(_q(rtt, "p99"), 2), _f(_q(ow, "p50"), 2), _f(_q(ow, "p95"), 2),
                 _f(_q(ow, "p99"), 2))
        lines.append("  ".join(f"{c:>{n}}" for c, n in zip(cells, w)))
    lines.append("")
    head2 = ("protocol", "routes ms p50", "p95", "route changes", "lost/sent", "lost at events",
             "max recovery ms", "stretch p50")
    lines.append("  ".join(f"{h:>14}" for h in head2))
    for r in rows:
        rec = max((e["recovery_ms"] for e in r["events"]), default=0.0)
        cells2 = (r["protocol"], _f(r["route_ms_median"]), _f(r["route_ms_p95"]), _f(r["route_changes"]),
                  f"{r['probes_lost']}/{r['probes_sent']}", _f(r["lost_total"]), _f(rec, 0), _f(r["stretch_p50"], 3))
        lines.append("  ".join(f"{c:>14}" for c in cells2))
    if any(r.get("recovery") for r in rows):
        lines.append("")
        lines.append("recovery after scheduled events (all flows: lost in the window after / worst first arrival"
                     " / worst time back within the delay bound / route changes):")
    for r in rows:
        for rec in r.get("recovery") or []:
            fl = rec["flows"]

            def worst(key: str, fl: list[dict[str, Any]] = fl) -> str:
                v = [f[key] for f in fl]
                return "never" if None in v else f"{max(v, default=0.0):.3f} s"

            lines.append(f"  {r['protocol']:>14}  event {rec['index']} at {rec['at_s']:g} s ({rec['kind']} "
                         f"{rec['target']}): lost {sum(f['lost'] for f in fl)}/{sum(f['sent'] for f in fl)}, "
                         f"first arrival {worst('first_arrival_s')}, within bound {worst('within_bound_s')}, "
                         f"route changes {sum(f['route_changes'] for f in fl)}")
    flagged = [r for r in rows if r.get("flags")]
    for r in flagged:
        p = r.get("probes") or {}
        lines.append(f"!! {r['protocol']}: {', '.join(r['flags'])} ({p.get('received', 0)} of "
                     f"{p.get('sent', 0)} probes arrived): its figures describe a broken run")
        if "DELAYS-OFF" in r["flags"] and p.get("in_bound_after_pct") is not None:
            lines.append(f"   {r['protocol']}: after converging at {p['converged_s']:.1f} s, only "
                         f"{p['in_bound_after_pct']:.1f} % of a flow's probes arrived within the delay bound")
        if "LATE" in r["flags"]:
            lines.append(f"   {r['protocol']}: steps applied {r['late_ms_p95']:.0f} ms late at p95 (one step is "
                         f"{1e3 * r['step_s']:.0f} ms): the network lagged its timeline")
    return lines


def print_table(rows: list[dict[str, Any]]) -> None:
    for line in format_table(rows):
        print(line)


def plot_recovery(rows: list[dict[str, Any]], top: Path) -> None:
    """``plots/recovery.{png,svg}``: per scheduled event and protocol, the probes lost in the window after
    it and the worst first arrival over the flows (a flow with none before the run's end: "never")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = sorted({(rec["at_s"], rec["index"], rec["kind"], rec["target"]) for r in rows
                     for rec in r.get("recovery") or []})
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        got = {(rec["at_s"], rec["index"]): rec["flows"] for rec in r.get("recovery") or []}
        for j, (at, idx, _, _) in enumerate(events):
            fl = got.get((at, idx), [])
            x = j + (i - (len(rows) - 1) / 2) * width
            lost = sum(f["lost"] for f in fl)
            axes[0].bar(x, lost, width, color=f"C{i}", label=r["protocol"] if j == 0 else None)
            firsts = [f["first_arrival_s"] for f in fl]
            if None in firsts or not fl:
                axes[1].text(x, 0, "never" if fl else "n/a", ha="center", va="bottom", fontsize=7, color="red",
                             rotation=90)
            else:
                axes[1].bar(x, max(firsts), width, color=f"C{i}")
    names = [f"{k} {t}\n{at:g} s" if len(t) < 28 else f"{k}\n{at:g} s" for at, _, k, t in events]
    for ax, title in zip(axes, ("probes lost in the window after the event", "worst first arrival after it (s)")):
        ax.set_xticks(range(len(events)), names, fontsize=7)
        ax.set_xlim(-0.5, len(events) - 0.5)  # texts ("never") do not widen the axes as bars do
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    (top / "plots").mkdir(exist_ok=True)
    for ext in ("png", "svg"):
        fig.savefig(top / "plots" / f"recovery.{ext}", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_compare(rows: list[dict[str, Any]], top: Path,
                 samples: dict[str, dict[str, dict[str, np.ndarray]]] | None = None) -> None:
    """``plots/compare.{png,svg}``: CDFs of RTT and one-way delay per protocol, then per-protocol bars.

    Parameters
    ----------
    rows : list of dict
        :func:`summarise_protocol` of each protocol.
    top : Path
        The comparison folder.
    samples : dict, optional
        Each protocol's probe samples (:func:`read_probe_samples`), for the CDFs.

    A flagged protocol (:func:`flags`) is named with its flags in red on every panel: in the CDFs'
    legends and under its bars, which are hatched.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = samples or {}
    names = [r["protocol"] for r in rows]
    flagged = {r["protocol"]: r.get("flags") or [] for r in rows}
    valid = {r["protocol"]: r.get("valid_pct") for r in rows}
    labels = [n + ("\n" + "\n".join(flagged[n]) if flagged[n] else "") for n in names]
    metrics = (("loss_pct", "probes lost (%)"),
               ("converged_s", "convergence (s after build)"),
               ("route_ms_median", "route compute+install per step (ms, median)"),
               ("lost_total", "probes lost around handovers/outages/events"),
               ("stretch_p50", "path stretch (measured / best delay, p50)"),
               ("route_changes", "route changes"))
    cdfs = (("rtt", "ping RTT (ms)"), ("one_way", "udp-probe one-way delay (ms)"))
    fig, axes = plt.subplots(2, 4, figsize=(16, 7.2))
    flat = list(axes.flat)
    for ax, (metric, title) in zip(flat[:2], cdfs):
        for i, n in enumerate(names):
            v = np.concatenate([s["measured_ms"] for s in samples.get(n, {}).values() if s["metric"] == metric]
                               or [np.empty(0)])
            sent = len(v)
            v = np.sort(v[np.isfinite(v)])
            vp = valid.get(n)
            lab = (f"{n} ({len(v)}/{sent} arrived{'' if vp is None else f', {vp:.0f} % of samples valid'})"
                   + (f" {', '.join(flagged[n])}" if flagged[n] else ""))
            if len(v):
                # the curve tops out at the delivered fraction: lost probes are never "under" any delay
                ax.step(v, np.arange(1, len(v) + 1) / max(sent, 1), where="post", color=f"C{i}", label=lab)
            else:
                ax.plot([], [], color=f"C{i}", label=lab)
        ax.set_title(f"CDF of {title}", fontsize=9)
        ax.set_xlabel("ms", fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        leg = ax.legend(fontsize=7, loc="lower right")
        for text, n in zip(leg.get_texts(), names):
            if flagged[n]:
                text.set_color("red")
    for ax, (key, title) in zip(flat[2:], metrics):
        vals: list[float] = []
        for r in rows:
            got = (r.get("probes") or {}).get(key) if key in ("loss_pct", "converged_s") else r.get(key)
            vals.append(got if got is not None else 0.0)
        bars = ax.bar(range(len(names)), vals, color=[f"C{i}" for i in range(len(names))])
        for i, r in enumerate(rows):  # a missing figure (never converged, no samples) is not a zero
            got = (r.get("probes") or {}).get(key) if key in ("loss_pct", "converged_s") else r.get(key)
            if got is None:
                ax.text(i, 0, "never" if key == "converged_s" else "n/a", ha="center", va="bottom", fontsize=8,
                        color="red")
        for b, n in zip(bars, names):
            if flagged[n]:
                b.set_hatch("xx")
                b.set_edgecolor("red")
        ax.set_xticks(range(len(names)), labels)
        for tick, n in zip(ax.get_xticklabels(), names):
            if flagged[n]:
                tick.set_color("red")
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    if any(flagged.values()):
        fig.suptitle("FLAGGED: " + "; ".join(f"{n}: {', '.join(f)}" for n, f in flagged.items() if f),
                     color="red", fontsize=10)
    fig.tight_layout()
    (top / "plots").mkdir(exist_ok=True)
    with plt.rc_context({"svg.fonttype": "none"}):  # text stays text in the SVG: the flags can be searched
        for ext in ("png", "svg"):
            fig.savefig(top / "plots" / f"compare.{ext}", dpi=110)
    plt.close(fig)
