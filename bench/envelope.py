"""This machine's envelope: how many nodes and packets per second it carries before the delay error
leaves the bound.

    sudo .venv/bin/python bench/envelope.py                                   # 3 sizes x 3 rates, ~5 min
    sudo .venv/bin/python bench/envelope.py --sizes 12x12 --pps 100,1000 --duration 6
    sudo .venv/bin/python bench/envelope.py --plot envelope.png

Each cell is one ``satnetem run`` of a +Grid shell of PLANES x SATS satellites with gateways and hosts at
London and New York, carrying udp-probe flows from London to New York at the cell's total rate (flows of
at most 1,000 packets per second each, the probe's limit). From the run's summary: the one-way delay
error (measured - predicted; the worst flow's |p50| and p99), against the bound the summary judges runs
by, max(1 ms, 3 % of the predicted delay); the share of valid samples (:mod:`emulator.validity`), the
p95 step lateness and the packets received per second. A cell is within the envelope when the worst
|p50| error over all samples is within the bound; the table gives the error over valid samples too.
The largest rate within the bound per size is the envelope. Runs are one at a time; the machine should
be otherwise idle for figures that mean something (the table prints the load average before each run).
The default grid's largest cell (72x22, 1,588 nodes, 10,000 packets/s) took 40 s here and its smallest
about 15 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_FLOW_PPS = 1000

SCENARIO = """
name = "envelope-{planes}x{sats}-{pps}pps"
[time]
start = "2023-07-18T12:00:00Z"
duration_s = {duration}
step_s = 1.0
[[constellation.shells]]
name = "shell"
planes = {planes}
sats_per_plane = {sats}
[gsl]
min_elevation_deg = 10.0
[[ground.sites]]
name = "gs-london"
lat_deg = 51.5074
lon_deg = -0.1278
[[ground.sites]]
name = "gs-new-york"
lat_deg = 40.7128
lon_deg = -74.0060
"""
FLOW = """[[traffic]]
kind = "udp-probe"
name = "p{i}"
src = "h-london"
dst = "h-new-york"
rate_pps = {rate:g}
size_bytes = 100
"""


def scenario(planes: int, sats: int, pps: float, duration_s: int) -> str:
    n = max(1, -(-int(pps) // MAX_FLOW_PPS))
    text = SCENARIO.format(planes=planes, sats=sats, pps=int(pps), duration=duration_s)
    return text + "".join(FLOW.format(i=i, rate=pps / n) for i in range(n))


def bound_ms(predicted_ms: float) -> float:
    return max(1.0, 0.03 * predicted_ms)


def run_cell(planes: int, sats: int, pps: float, duration_s: int, shaper: str | None, work: Path,
             run_id: str = "envelope") -> dict:
    """One run (named ``<run_id>-<planes>x<sats>-<pps>`` for 'satnetem clean --run-id'); its figures from
    summary.json (None where the run gave none)."""
    d = work / f"{planes}x{sats}-{int(pps)}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "s.toml").write_text(scenario(planes, sats, pps, duration_s))
    cmd = [sys.executable, "-m", "emulator.cli", "run", str(d / "s.toml"), "-o", str(d / "out"),
           "--run-id", f"{run_id}-{planes}x{sats}-{int(pps)}"]
    if shaper:
        cmd += ["--shaper", shaper]
    load1 = os.getloadavg()[0]
    t = time.monotonic()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=duration_s + 600)
    cell = {"planes": planes, "sats": sats, "nodes": None, "pps": pps, "load1": load1,
            "wall_s": time.monotonic() - t, "ok": r.returncode == 0}
    try:
        s = json.loads((d / "out" / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        cell["error"] = (r.stdout + r.stderr).strip().splitlines()[-1:] or ["no output"]
        return cell
    probes = [f for f in s.get("flows", []) if f.get("kind") == "udp-probe" and f.get("sent")]
    try:
        tl_nodes = json.loads((d / "out" / "addresses.json").read_text())
        cell["nodes"] = len({v for owners in tl_nodes.values() for v in owners.values()})
    except (OSError, json.JSONDecodeError):
        pass
    if not probes:
        cell["error"] = ["no udp-probe samples"]
        return cell

    def worst(key: str, q: str, valid: bool) -> tuple[float | None, float | None]:
        """The flow whose |error| quantile is largest against its bound: (|error|, bound)."""
        best: tuple[float, float, float] | None = None
        for f in probes:
            e = (f["valid"][key] if valid else f[key])[q]
            p = f["predicted_ms"]["p50"]
            if e is None or p is None:
                continue
            ratio = abs(e) / bound_ms(p)
            if best is None or ratio > best[0]:
                best = (ratio, abs(e), bound_ms(p))
        return (best[1], best[2]) if best else (None, None)

    cell["err_p50_ms"], cell["bound_ms"] = worst("error_ms", "p50", False)
    cell["err_p99_ms"], _ = worst("error_ms", "p99", False)
    cell["valid_err_p50_ms"], _ = worst("error_ms", "p50", True)
    sent = sum(f["sent"] for f in probes)
    cell["loss_pct"] = 100.0 * sum(f["lost"] for f in probes) / sent
    cell["rx_pps"] = (sent - sum(f["lost"] for f in probes)) / duration_s
    cell["valid_pct"] = (s.get("validity") or {}).get("valid_pct")
    cell["late_p95_ms"] = (s.get("lateness") or {}).get("late_ms_p95")
    cell["within"] = cell["err_p50_ms"] is not None and cell["err_p50_ms"] <= cell["bound_ms"]
    return cell


def _f(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def table(cells: list[dict]) -> str:
    head = (f"{'shell':>7} {'nodes':>6} {'pps':>6} {'rx pps':>7} {'loss%':>6} {'|err| p50':>9} {'bound':>6} "
            f"{'err p99':>8} {'valid p50':>9} {'valid%':>6} {'late p95':>8} {'load1':>5}  within")
    lines = [head, "-" * len(head)]
    for c in cells:
        if "error" in c:
            lines.append(f"{c['planes']:>3}x{c['sats']:<3} {'-':>6} {c['pps']:>6g}  run failed: {c['error'][0][:80]}")
            continue
        lines.append(f"{c['planes']:>3}x{c['sats']:<3} {c['nodes'] or '-':>6} {c['pps']:>6g} {_f(c['rx_pps'], 0):>7} "
                     f"{_f(c['loss_pct'], 1):>6} {_f(c['err_p50_ms']):>9} {_f(c['bound_ms']):>6} "
                     f"{_f(c['err_p99_ms'], 1):>8} {_f(c['valid_err_p50_ms']):>9} {_f(c['valid_pct'], 1):>6} "
                     f"{_f(c['late_p95_ms'], 0):>8} {c['load1']:>5.1f}  {'yes' if c['within'] else 'NO'}")
    lines.append("")
    lines.append("envelope (largest rate with |error| p50 within the bound, per size):")
    for size in dict.fromkeys((c["planes"], c["sats"]) for c in cells):
        ok = [c for c in cells if (c["planes"], c["sats"]) == size and c.get("within")]
        nodes = next((c["nodes"] for c in cells if (c["planes"], c["sats"]) == size and c.get("nodes")), None)
        lines.append(f"  {size[0]}x{size[1]} ({nodes or '?'} nodes): "
                     + (f"{max(c['pps'] for c in ok):g} packets/s" if ok else "none of the rates tried"))
    return "\n".join(lines)


def plot(cells: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for size in dict.fromkeys((c["planes"], c["sats"]) for c in cells):
        cs = [c for c in cells if (c["planes"], c["sats"]) == size and c.get("err_p50_ms") is not None]
        if cs:
            ax.plot([c["pps"] for c in cs], [c["err_p50_ms"] for c in cs], "o-",
                    label=f"{size[0]}x{size[1]} ({cs[0]['nodes'] or '?'} nodes)")
    b = [c["bound_ms"] for c in cells if c.get("bound_ms")]
    if b:
        ax.axhline(min(b), color="crimson", ls="--", label=f"bound {min(b):.2f} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("packets per second offered")
    ax.set_ylabel("worst |one-way error| p50 (ms)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="12x12,36x22,72x22", help="PLANESxSATS shells, comma-separated")
    ap.add_argument("--pps", default="300,3000,10000", help="total packets per second, comma-separated")
    ap.add_argument("--duration", type=int, default=10, help="seconds played per cell (default 10)")
    ap.add_argument("--shaper", choices=("auto", "netem", "userspace"), default=None)
    ap.add_argument("--plot", type=Path, default=None, help="also write the error against rate here (png/svg)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the runs' results folders here")
    ap.add_argument("--run-id", default="envelope",
                    help="each cell's run is named <run-id>-<planes>x<sats>-<pps> (default envelope)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("envelope needs root (each cell is a 'satnetem run')")
    try:
        sizes = [tuple(int(x) for x in s.lower().split("x")) for s in args.sizes.split(",")]
        rates = [float(x) for x in args.pps.split(",")]
    except ValueError:
        sys.exit("envelope: --sizes is like 12x12,24x24 and --pps like 200,1000")
    if any(len(s) != 2 or min(s) < 2 for s in sizes) or any(not 0 < r <= 20 * MAX_FLOW_PPS for r in rates):
        sys.exit(f"envelope: sizes need two numbers >= 2, rates must be in (0, {20 * MAX_FLOW_PPS}]")
    if not 2 <= args.duration <= 600:
        sys.exit("envelope: --duration must be in [2, 600] s")
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, kernel {platform.release()}")
    print(f"command: {' '.join([Path(sys.executable).name] + sys.argv)}", flush=True)
    cells = []
    with tempfile.TemporaryDirectory(prefix="satnetem-envelope-") as tmp:
        work = args.keep or Path(tmp)
        for planes, sats in sizes:
            for pps in rates:
                c = run_cell(planes, sats, pps, args.duration, args.shaper, work, args.run_id)
                cells.append(c)
                print(f"  {planes}x{sats} at {pps:g} pps: {'ok' if c['ok'] else 'FAILED'} in {c['wall_s']:.0f} s, "
                      f"|err| p50 {_f(c.get('err_p50_ms'))} ms (bound {_f(c.get('bound_ms'))})", flush=True)
    print()
    print(table(cells))
    if args.plot:
        plot(cells, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
