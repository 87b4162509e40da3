"""Benchmark: the netem backend against the userspace backend, both measured in the same qemu VM.

The development machine's kernel has no sch_netem, so the netem backend runs only in the stock-kernel VM
of ``tests/vm`` (qemu TCG: no KVM, an emulated CPU several times slower than the host). Absolute figures
from there say little about a real machine; the ratio netem / userspace measured in the same VM, in the
same invocation, with the runs of the two backends alternating, is what carries over: applied to the
native userspace figures it estimates what netem would give on the host's hardware.

The workload, once per backend and run:

* ``satnetem run --timeline T --shaper B`` on a small Walker shell (default 12 x 12 at 1,000 km, 53 deg,
  min. elevation 10 deg) with the two default ground hosts (London, New York) and a ping London -> New York
  at 10/s, 20 steps of 1 s in real time. From its results folder this script reads the bring-up time
  (``summary.json`` ``build_s``: the time ``Emulation.build`` took), per-step apply time (``steps.csv``) and
  computes measured - predicted RTT per answered ping from ``samples.csv`` (p50/p95/p99 over every answered
  ping, valid or not: inside the VM the run's own validity checks mark much of it invalid).
* TCP throughput (iperf3, ``--tcp-seconds``) through 4 shaped hops of 5 ms each way (10 Gbit/s so the
  rate does not limit), the line of ``bench/bench_userspace_throughput.py`` shaped by ``make_shaper(B)``.

One VM runs all runs (``--runs`` each backend, order netem, userspace, userspace, netem, ...); each run
appends a line to ``results.jsonl`` in a host folder shared into the VM, read here afterwards. ``--native``
also runs the userspace workload on the host itself, to show how much slower the VM is and to apply the
ratios to. Measured (2 vCPUs): a run ~2.5 min for userspace, ~3.5 for netem, all in the VM; the defaults take
~20 min in it, ~1 min natively. The README's figures are of ``--planes 22 --per-plane 72 --duration-s 10
--memory-mb 8192`` (1,588 namespaces): a run took 2-4 min per backend in the VM with the host quiet, 15 with it
loaded; ``--runs 2`` 12-15 min. Needs root, qemu-system-x86, a kernel with sch_netem installed under /boot
(see tests/vm).

    sudo .venv/bin/python bench/bench_vm_backends.py [--runs 3] [--native] [--cpus 2] [--memory-mb 3072]
        [--planes 12] [--per-plane 12] [--duration-s 20] [--tcp-seconds 5] [--timeout-s 1500] [--keep DIR]
    .venv/bin/python bench/bench_vm_backends.py --report DIR1/results.jsonl DIR2/results.jsonl   # pooled

Prints figures with the machine, the VM and the command; writes nothing into the checkout.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

CHECKOUT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CHECKOUT))
sys.path.insert(0, str(CHECKOUT / "bench"))

BACKENDS = ("netem", "userspace")
#: Modules loaded at the VM's boot beyond the harness's own: none. xt_NFQUEUE, which the stock 6.1 kernel does
#: not load on demand for the userspace backend's rule, the backend loads itself (emulator.kernel.modules).
VM_EXTRA_MODULES: tuple[str, ...] = ()

SCENARIO = """\
# bench/bench_vm_backends.py: a small Walker shell, the default scenario's two ground hosts, one ping
name = "vm-backends"
seed = 1

[time]
start = "2023-07-18T12:00:00Z"
duration_s = {duration_s}
step_s = 1.0

[[constellation.shells]]
name = "w"
pattern = "delta"
planes = {planes}
sats_per_plane = {per_plane}
phasing = 5
altitude_km = 1000
inclination_deg = 53

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

[[traffic]]
kind = "ping"
src = "h-london"
dst = "h-new-york"
rate_pps = 10
"""


# --------------------------------------------------------------------------------------------------
# Inside the VM (or natively with --native): the workload


def tcp_through_four_hops(backend: str, seconds: int, tag: str) -> dict[str, Any]:
    """iperf3 TCP h1 -> h2 across 4 hops shaped at 5 ms each way by ``make_shaper(backend)``.

    The line, its addresses and iperf3 driver are ``bench_userspace_throughput``'s; the ports name their
    peers, as the emulator's do (the userspace backend holds packets where they arrive, netem ignores it).
    """
    import bench_userspace_throughput as line

    from emulator.shaping import LinkShape, make_shaper

    names, iprs, _ends, peered = line.build(tag)
    shaper = None
    try:
        shaper = make_shaper(backend, seed=1)[0]
        for n in line.NODES:
            shaper.prepare_node(n, f"/run/netns/{names[n]}", iprs[n])
        shaper.set([(p, LinkShape(delay_ms=5.0, rate_mbps=10000.0)) for p in peered], iprs.__getitem__)
        out = subprocess.run(["ip", "netns", "exec", names["h1"], "ping", "-n", "-c", "5", "-i", "0.2", line.DST],
                             capture_output=True, text=True, check=False).stdout
        rtts = [float(x.split("=")[1]) for x in out.split() if x.startswith("time=")]
        r = line.iperf(names, udp=False, seconds=seconds, port=5477)
        return {"tcp_mbps": r["mbps"], "line_rtt_ms": statistics.median(rtts) if rtts else None}
    finally:
        if shaper is not None:
            shaper.close()
        line.teardown(names, iprs)


def run_until_summary(argv: list[str], folder: Path, timeout_s: float) -> int:
    """Run ``satnetem run`` until it has written ``summary.json`` (after its teardown), then stop it.

    What this bench reads is on disk by then, but for ``samples.csv`` (see :func:`finish_reports`); what
    follows is the run's report and plots, which took 3-5 min per run in the TCG VM at 1,588 namespaces.
    Returns the run's exit status, 0 if it was stopped after a complete summary, 1 after an incomplete one,
    124 on timeout.
    """
    summary = folder / "summary.json"
    proc = subprocess.Popen(argv, cwd=CHECKOUT)
    deadline = time.monotonic() + timeout_s
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                return 124
            try:
                done = json.loads(summary.read_text())
            except (OSError, ValueError):  # not there yet, or being written
                done = None
            if done is not None and "teardown_s" in done:
                print("  summary.json written: stopping the run before its plots", flush=True)
                return 0 if done.get("complete") else 1
            time.sleep(1.0)
        return proc.returncode
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def inner(args: argparse.Namespace) -> int:
    """Run the workload ``args.runs`` times per backend, alternating; one JSON line per run."""
    from topologies.errors import SatnetemError

    out = Path(args.out)
    results = out / "results.jsonl"
    backends = args.backends.split(",")
    where = "vm" if os.environ.get("SATNETEM_IN_VM") == "1" else "native"
    for i in range(args.runs):
        order = backends if i % 2 == 0 else backends[::-1]  # alternate, so drift hits both alike
        for backend in order:
            folder = out / f"{where}-run{i + 1}-{backend}"
            run_id = f"vmb{os.getpid() % 1000}{i}{backend[0]}"
            argv = [sys.executable, "-m", "emulator.cli", "run", "--timeline", args.timeline, "--shaper", backend,
                    "-o", str(folder), "--run-id", run_id]
            print(f"[{where}] run {i + 1} {backend}: {' '.join(argv)}", flush=True)
            t = time.monotonic()
            rc = run_until_summary(argv, folder, args.run_timeout_s)
            wall_s = time.monotonic() - t
            if rc != 0:  # whatever a cut-short run left behind, by its own id only
                subprocess.run([sys.executable, "-m", "emulator.cli", "clean", "--run-id", run_id], cwd=CHECKOUT,
                               check=False)
            rec: dict[str, Any] = {"where": where, "run": i + 1, "backend": backend, "folder": str(folder),
                                   "exit": rc, "wall_s": round(wall_s, 1), "kernel": platform.release()}
            if args.tcp_seconds > 0:
                t = time.monotonic()
                try:
                    rec.update(tcp_through_four_hops(backend, args.tcp_seconds, f"vmb{os.getpid() % 1000}{i}"))
                except (SatnetemError, subprocess.SubprocessError, OSError, KeyError, ValueError) as e:
                    rec["tcp_error"] = f"{type(e).__name__}: {e}"
                rec["tcp_wall_s"] = round(time.monotonic() - t, 1)
            print(f"[{where}] run {i + 1} {backend}: {json.dumps(rec)}", flush=True)
            with open(results, "a") as f:
                f.write(json.dumps(rec) + "\n")
    return 0


# --------------------------------------------------------------------------------------------------
# On the host: read the folders, medians and ratios


def run_metrics(folder: Path) -> dict[str, float]:
    """Bring-up, step apply and measured - predicted RTT of one ``satnetem run`` results folder."""
    m: dict[str, float] = {}
    summary_path = folder / "summary.json"
    if summary_path.is_file():
        s = json.loads(summary_path.read_text())
        if s.get("build_s") is not None:
            m["bringup_s"] = float(s["build_s"])
    if (folder / "steps.csv").is_file():
        with open(folder / "steps.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        apply_ms = np.array([float(r["apply_ms"]) for r in rows])
        late_ms = np.array([float(r["late_ms"]) for r in rows])
        if len(apply_ms):
            m["apply_median_ms"] = float(np.median(apply_ms))
            m["apply_p95_ms"] = float(np.percentile(apply_ms, 95))
            m["late_p95_ms"] = float(np.percentile(late_ms, 95))
    if (folder / "samples.csv").is_file():
        with open(folder / "samples.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["kind"] == "ping"]
        err = np.array([float(r["measured_ms"]) - float(r["predicted_ms"]) for r in rows
                        if r["measured_ms"] and r["predicted_ms"]])
        m["pings"] = float(len(rows))
        m["lost"] = float(sum(1 for r in rows if not r["measured_ms"]))
        if len(err):
            m["err_p50_ms"], m["err_p95_ms"], m["err_p99_ms"] = (float(x) for x in np.percentile(err, [50, 95, 99]))
    return m


#: (key, label, format) of the figures compared; ratios are netem / userspace of the medians over runs.
METRICS = (("bringup_s", "bring-up, s", ".2f"), ("apply_median_ms", "step apply median, ms", ".1f"),
           ("apply_p95_ms", "step apply p95, ms", ".1f"), ("late_p95_ms", "step late p95, ms", ".1f"),
           ("err_p50_ms", "measured - predicted RTT p50, ms", ".2f"),
           ("err_p95_ms", "measured - predicted RTT p95, ms", ".2f"),
           ("err_p99_ms", "measured - predicted RTT p99, ms", ".2f"),
           ("lost", "pings lost", ".0f"), ("tcp_mbps", "TCP, 4 hops x 5 ms, Mbit/s", ".0f"))


def finish_reports(*results: Path) -> None:
    """``satnetem report`` on the host for every run folder without ``samples.csv``: a run stopped before
    its plots (:func:`run_until_summary`) left its probes' raw records only; on the host this takes ~4 s a
    folder, in the TCG VM minutes."""
    for r in results:
        if not r.is_file():
            continue
        for line in r.read_text().splitlines():
            folder = Path(json.loads(line)["folder"])
            if (folder / "flows").is_dir() and not (folder / "samples.csv").is_file():
                subprocess.run([sys.executable, "-m", "emulator.cli", "report", str(folder)], cwd=CHECKOUT,
                               stdout=subprocess.DEVNULL, check=False)


def collect(*results: Path) -> dict[tuple[str, str], list[dict[str, float]]]:
    """Per (where, backend): each run's figures (a run whose ``satnetem run`` failed still counts its files),
    over one or more ``results.jsonl`` files (invocations kept with ``--keep``, pooled with ``--report``)."""
    by: dict[tuple[str, str], list[dict[str, float]]] = {}
    lines = [line for r in results if r.is_file() for line in r.read_text().splitlines()]
    for line in lines:
        rec = json.loads(line)
        m = run_metrics(Path(rec["folder"]))
        if rec.get("tcp_mbps") is not None:
            m["tcp_mbps"] = float(rec["tcp_mbps"])
        m["exit"] = float(rec["exit"])
        by.setdefault((rec["where"], rec["backend"]), []).append(m)
    return by


def median_of(runs: list[dict[str, float]], key: str) -> float | None:
    vals = [r[key] for r in runs if key in r]
    return statistics.median(vals) if vals else None


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def ratio(a: float | None, b: float | None) -> str:
    """a / b, or why not: a ratio of a positive and a non-positive figure means nothing."""
    if a is None or b is None:
        return "-"
    if a <= 0 or b <= 0:
        return "n/a (sign)" if a != b else "-"
    return f"{a / b:.2f}x"


def report(by: dict[tuple[str, str], list[dict[str, float]]]) -> None:
    vm_n, vm_u = by.get(("vm", "netem"), []), by.get(("vm", "userspace"), [])
    nat_u = by.get(("native", "userspace"), [])
    print("\nper run (exit status of satnetem run, then the figures):")
    for (where, backend), runs in sorted(by.items()):
        for i, r in enumerate(runs, 1):
            figs = ", ".join(f"{k}={fmt(r.get(k), spec)}" for k, _, spec in METRICS)
            print(f"  {where:6s} {backend:9s} run {i}: exit {int(r['exit'])}, {figs}")
    head = f"{'metric':34s} {'VM netem':>10s} {'VM userspace':>12s} {'netem/userspace':>16s}"
    if nat_u:
        head += f" {'native userspace':>17s} {'VM/native (userspace)':>22s} {'native x ratio':>15s}"
    print(f"\nmedians over runs (VM: {len(vm_n)} netem, {len(vm_u)} userspace runs; native: {len(nat_u)}):")
    print(head)
    for key, label, spec in METRICS:
        a, b = median_of(vm_n, key), median_of(vm_u, key)
        row = f"{label:34s} {fmt(a, spec):>10s} {fmt(b, spec):>12s} {ratio(a, b):>16s}"
        if nat_u:
            c = median_of(nat_u, key)
            est = c * a / b if (a is not None and b is not None and c is not None and a > 0 and b > 0) else None
            row += f" {fmt(c, spec):>17s} {ratio(b, c):>22s} {fmt(est, spec):>15s}"
        print(row)


def host(args: argparse.Namespace) -> int:
    from tests.vm import netemvm

    share = Path(args.keep).absolute() if args.keep else Path(tempfile.mkdtemp(prefix="vm-backends-"))
    share.mkdir(parents=True, exist_ok=True)
    os.chmod(share, 0o755)
    kernel = netemvm.find_kernel()
    netns_dir = Path("/run/netns")
    beside = len(list(netns_dir.iterdir())) if netns_dir.is_dir() else 0
    print(f"machine: {platform.node()} {platform.platform()} cpus={os.cpu_count()} python={platform.python_version()}")
    print(f"command: {' '.join(sys.argv)}")
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average {os.getloadavg()}; {beside} named network "
          f"namespaces (/run/netns) on the host from other work")
    print(f"VM: qemu TCG, kernel {kernel.version}, {args.cpus} vCPUs, {args.memory_mb} MB, modules loaded at boot "
          f"also {', '.join(VM_EXTRA_MODULES) or 'none'}; results in {share}")
    scenario = share / "scenario.toml"
    scenario.write_text(SCENARIO.format(duration_s=args.duration_s, planes=args.planes, per_plane=args.per_plane))
    timeline = share / "timeline.npz"
    subprocess.run([sys.executable, "-m", "emulator.cli", "plan", str(scenario), "-o", str(timeline), "--pair",
                    "h-london,h-new-york"], cwd=CHECKOUT, check=True)
    common = ["--out", str(share), "--timeline", str(timeline), "--runs", str(args.runs),
              "--tcp-seconds", str(args.tcp_seconds), "--run-timeout-s", str(args.run_timeout_s)]
    t = time.monotonic()
    vm_exit = 0
    if not args.no_vm:
        res = netemvm.run_in_vm([sys.executable, str(Path(__file__).resolve()), "--inner", "--backends",
                                 args.backends, *common],
                                netemvm.VmConfig(memory_mb=args.memory_mb, cpus=args.cpus, timeout_s=args.timeout_s,
                                                 shares=(share,), extra_modules=VM_EXTRA_MODULES),
                                stream=sys.stdout, cwd=str(CHECKOUT))
        vm_exit = res.exit_code
        print(f"VM: exit {res.exit_code}, boot {res.boot_s:.1f} s, whole invocation {time.monotonic() - t:.0f} s")
    if args.native:
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--inner", "--backends", "userspace",
                        *common], cwd=CHECKOUT, check=False)
    print(f"date at the end: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average {os.getloadavg()}")
    finish_reports(share / "results.jsonl")
    report(collect(share / "results.jsonl"))
    if not args.keep:
        shutil.rmtree(share, ignore_errors=True)
    return 0 if vm_exit == 0 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per backend (alternating)")
    ap.add_argument("--planes", type=int, default=12)
    ap.add_argument("--per-plane", type=int, default=12)
    ap.add_argument("--duration-s", type=int, default=20, help="timeline seconds played per run (1 s steps)")
    ap.add_argument("--tcp-seconds", type=int, default=5, help="iperf3 seconds per run; 0: no throughput")
    ap.add_argument("--native", action="store_true", help="also run the userspace workload on the host")
    ap.add_argument("--no-vm", action="store_true", help="run no VM (with --native: the host's figures only)")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--memory-mb", type=int, default=3072)
    ap.add_argument("--timeout-s", type=float, default=1500.0, help="for the whole VM invocation")
    ap.add_argument("--run-timeout-s", type=float, default=600.0, help="for one satnetem run")
    ap.add_argument("--keep", help="keep the results folders here (default: a temporary folder, removed)")
    ap.add_argument("--report", nargs="+", metavar="RESULTS_JSONL",
                    help="run nothing: pool the runs of these results.jsonl files (of --keep folders) and report")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--timeline", help=argparse.SUPPRESS)
    ap.add_argument("--backends", default=",".join(BACKENDS),
                    help="the VM's backends in the order of the first run (later runs alternate); default "
                         "%(default)s")
    args = ap.parse_args()
    if args.report:
        finish_reports(*(Path(r) for r in args.report))
        report(collect(*(Path(r) for r in args.report)))
        return 0
    if args.runs < 1 or args.duration_s < 2 or args.tcp_seconds < 0:
        ap.error("--runs >= 1, --duration-s >= 2, --tcp-seconds >= 0")
    if not set(args.backends.split(",")) <= set(BACKENDS):
        ap.error(f"--backends: a comma-separated list of {', '.join(BACKENDS)}, got {args.backends!r}")
    if os.geteuid() != 0:
        ap.error("needs root (namespaces; 9p passthrough of / for the VM)")
    return inner(args) if args.inner else host(args)


if __name__ == "__main__":
    sys.exit(main())
