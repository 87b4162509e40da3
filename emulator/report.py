"""Plots and the summary of a results folder, rebuilt from its files alone (no root, no network).

Reads ``samples.csv`` (one row per probe sample), ``steps.csv`` (one row per applied step),
``timeline.npz`` and ``summary.json``; writes PNG and SVG plots into ``plots/``.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from topologies.errors import ConfigError
from topologies.timeline import LINK_CLASSES, Reason, Timeline

log = logging.getLogger(__name__)


def read_samples(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    """{probe: {t_s, step, seq, rtt_ms, predicted_rtt_ms}} from samples.csv (missing values are NaN)."""
    path = folder / "samples.csv"
    if not path.is_file():
        return {}
    cols: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with open(path, newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            try:
                c = cols[row["probe"]]
                for k in ("t_s", "step", "seq", "rtt_ms", "predicted_rtt_ms"):
                    v = row.get(k, "")
                    c[k].append(float(v) if v not in ("", None) else np.nan)
            except (KeyError, ValueError) as e:
                raise ConfigError(f"malformed row {i + 2}: {e}", file=str(path)) from None
    return {p: {k: np.asarray(v) for k, v in c.items()} for p, c in cols.items()}


def stats(x: np.ndarray) -> dict[str, float | None]:
    x = x[np.isfinite(x)]
    if not len(x):
        return {"p50": None, "p95": None, "p99": None, "min": None, "max": None}
    return {"p50": float(np.percentile(x, 50)), "p95": float(np.percentile(x, 95)),
            "p99": float(np.percentile(x, 99)), "min": float(x.min()), "max": float(x.max())}


def summarise_samples(samples: dict[str, dict[str, np.ndarray]]) -> list[dict[str, Any]]:
    out = []
    for probe, s in samples.items():
        rtt, pred = s["rtt_ms"], s["predicted_rtt_ms"]
        lost = int(np.isnan(rtt).sum())
        err = rtt - pred
        out.append({"probe": probe, "sent": int(len(rtt)), "lost": lost,
                    "loss_pct": round(100 * lost / len(rtt), 2) if len(rtt) else None,
                    "rtt_ms": stats(rtt), "predicted_rtt_ms": stats(pred), "error_ms": stats(err),
                    "abs_error_ms": stats(np.abs(err))})
    return out


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


def _save(fig, folder: Path, name: str) -> list[Path]:
    paths = []
    for ext in ("png", "svg"):
        p = folder / f"{name}.{ext}"
        fig.savefig(p, dpi=110, bbox_inches="tight")
        paths.append(p)
    return paths


def plot_rtt(samples, tl: Timeline | None, folder: Path, played_s: float | None = None) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(samples), 1, figsize=(10, 3.2 * len(samples)), squeeze=False)
    ho, outage = _events(tl) if tl is not None else (np.array([]), np.array([]))
    if played_s is not None:
        ho, outage = ho[ho <= played_s], outage[outage <= played_s]
    for ax, (probe, s) in zip(axes[:, 0], samples.items()):
        ok = np.isfinite(s["rtt_ms"])
        ax.plot(s["t_s"][ok], s["rtt_ms"][ok], ".", ms=3, label="measured RTT")
        order = np.argsort(s["t_s"])
        ax.plot(s["t_s"][order], s["predicted_rtt_ms"][order], "-", lw=1.2, label="predicted RTT")
        lost = ~ok
        if lost.any():
            y = np.nanmax(s["rtt_ms"]) if ok.any() else 0
            ax.plot(s["t_s"][lost], np.full(lost.sum(), y), "x", color="red", ms=4, label="lost")
        for i, t in enumerate(ho):
            ax.axvline(t, color="grey", lw=0.6, ls="--", label="GSL handover" if i == 0 else None)
        for i, t in enumerate(outage):
            ax.axvline(t, color="orange", lw=0.6, ls=":", label="ISL outage" if i == 0 else None)
        ax.set_title(probe)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("RTT (ms)")
        ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    paths = _save(fig, folder, "rtt")
    plt.close(fig)
    return paths


def plot_loss(samples, folder: Path, bin_s: float = 1.0) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3))
    for probe, s in samples.items():
        if not len(s["t_s"]):
            continue
        bins = np.floor(s["t_s"] / bin_s).astype(int)
        bins -= bins.min()
        sent = np.bincount(bins)
        lost = np.bincount(bins, weights=np.isnan(s["rtt_ms"]).astype(float), minlength=len(sent))
        with np.errstate(invalid="ignore", divide="ignore"):
            pct = np.where(sent > 0, 100 * lost / sent, np.nan)
        t = (np.arange(len(sent)) + 0.5) * bin_s + np.floor(np.nanmin(s["t_s"]) / bin_s) * bin_s
        ax.step(t, pct, where="mid", label=probe)
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"loss per {bin_s:g} s (%)")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=7)
    paths = _save(fig, folder, "loss")
    plt.close(fig)
    return paths


def plot_error_cdf(samples, folder: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for probe, s in samples.items():
        e = (s["rtt_ms"] - s["predicted_rtt_ms"])
        e = np.sort(e[np.isfinite(e)])
        if len(e):
            ax.plot(e, np.arange(1, len(e) + 1) / len(e), label=probe)
    ax.set_xlabel("measured - predicted RTT (ms)")
    ax.set_ylabel("CDF")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    paths = _save(fig, folder, "rtt_error_cdf")
    plt.close(fig)
    return paths


def path_nodes(tl: Timeline, src: int, dst: int, step: int) -> list[int]:
    """Shortest-delay path (node indices) at a step, from the routing layer's computation."""
    from routing.paths import shortest_path

    return shortest_path(tl, src, dst, step)


def plot_map(tl: Timeline, folder: Path, steps: list[int], pairs: list[tuple[str, str]]) -> list[Path]:
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    sats = np.array(tl.nodes_of("sat"))
    isl = np.flatnonzero(tl.link_class == LINK_CLASSES.index("isl"))
    gws = tl.nodes_of("gateway")
    for step in steps:
        fig, ax = plt.subplots(figsize=(11, 5.6))
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


def report(folder: str | Path) -> dict[str, Any]:
    """Rebuild ``summary.json`` (probe statistics) and every plot of a results folder."""
    import matplotlib

    matplotlib.use("Agg")
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError("results folder not found", file=str(folder))
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
    samples = read_samples(folder)
    summary["probes"] = summarise_samples(samples)
    plots = folder / "plots"
    plots.mkdir(exist_ok=True)
    written: list[Path] = []
    played = played_steps(folder, tl)
    if samples:
        written += plot_rtt(samples, tl, plots, played * tl.step_s if tl is not None else None)
        written += plot_loss(samples, plots)
        written += plot_error_cdf(samples, plots)
    if tl is not None:
        pairs = [tuple(p.split("--", 1)) for p in samples] or []
        written += plot_map(tl, plots, sorted({0, played // 2, played - 1}), [p for p in pairs if len(p) == 2])
    summary["plots"] = [str(p.relative_to(folder)) for p in written]
    sp.write_text(json.dumps(summary, indent=2))
    return summary
