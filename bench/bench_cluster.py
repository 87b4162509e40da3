"""Benchmark: a full shell over three fake hosts (``satnetem run --cluster``) against the same run on one host.

    sudo .venv/bin/python bench/bench_cluster.py                 # Starlink shell 1 + 2 gateways, 40 steps of 1 s
    sudo .venv/bin/python bench/bench_cluster.py --runs 2 --duration 40 --placement partition

The scenario is the built-in one without its compute node (a clustered run has none yet): 72 x 22 satellites
at 550 km, two gateways and their hosts (1,588 nodes, 3,171 link slots), a ping h-london -> h-new-york at
10/s. ``--duration`` 40 s (the default) includes New York's gateway handing over to a satellite on another
host at step 24 (under ``plane``: the spare pair's ends change form between VXLAN and a veth on each host).

One host: ``satnetem run`` as a user runs it. Three hosts: :mod:`emulator.cluster.lab` (namespaces on a
bridge, 1 ms of underlay delay each way) with a Ray node in each (:mod:`emulator.cluster.raylab`), then
``satnetem run --cluster`` in fake host 0. From each run's ``summary.json``: bring-up (``build_s``: on the
cluster it includes joining Ray, the version and clock checks, the underlay measurement and every host's build
in parallel; the agents' build alone beside it), step lateness p50/p95/max (the cluster's over every host's
steps), apply p95, teardown, and the ping's measured - predicted RTT p50. Before the run: Ray's idle cost on the
three fake hosts, its processes' CPU over ``--idle-s`` seconds (share of one core) and their RSS, and the link
slots that cross hosts under each placement strategy.

Runs alternate one host / three hosts when ``--runs`` > 1; medians are printed. Everything else running on the
machine competes for its cores: say what ran beside.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emulator.clean import find_ours  # noqa: E402
from emulator.cluster.lab import FakeHosts, LabConfig  # noqa: E402
from emulator.cluster.placement import describe_one, summary  # noqa: E402
from emulator.cluster.raylab import RayLab  # noqa: E402
from topologies.scenario import DEFAULT_SCENARIO_TOML  # noqa: E402

SATNETEM = str(Path(sys.executable).with_name("satnetem"))


def scenario_text(rate_pps: float) -> str:
    """The built-in scenario without its compute node and the ping to it."""
    head = DEFAULT_SCENARIO_TOML.split("[[compute]]")[0]
    return head + f'[[traffic]]\nkind = "ping"\nsrc = "h-london"\ndst = "h-new-york"\nrate_pps = {rate_pps:g}\n'


def proc_cost(pids: set[int]) -> dict[int, tuple[float, float]]:
    """pid -> (CPU seconds so far, RSS MB) of each of ``pids`` still alive, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for p in pids:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            rss = 0.0
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
            out[p] = ((int(f[11]) + int(f[12])) / tick, rss)
        except (OSError, IndexError, ValueError):
            continue
    return out


def ray_idle(lab: FakeHosts, seconds: float) -> dict[str, Any]:
    """Ray's processes in the fake hosts, idle: count, CPU share of one core over ``seconds`` (of the processes
    alive at both ends), RSS at the end."""
    pids, _ = find_ours(lab.run_id)
    pids -= {lab.holder.pid} if lab.holder else set()
    a = proc_cost(pids)
    t0 = time.monotonic()
    time.sleep(seconds)
    b = proc_cost(pids)
    both = a.keys() & b.keys()
    cpu = sum(b[p][0] - a[p][0] for p in both)
    return {"processes": len(both), "cpu_pct_of_one_core": 100 * cpu / (time.monotonic() - t0),
            "rss_mb": sum(b[p][1] for p in both)}


def one_run(argv: list[str], out: Path, popen: Any, env: dict[str, str] | None, log: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    with open(log, "w") as f:
        p = popen([SATNETEM, "run", *argv, "-o", str(out)], stdout=f, stderr=subprocess.STDOUT, env=env)
        rc = p.wait(timeout=1800)
    wall = time.monotonic() - t0
    s = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    if rc != 0 or not s.get("complete"):
        raise SystemExit(f"run failed ({rc}): {log.read_text()[-2000:]}")
    late = s.get("lateness") or {}
    flow = next((f for f in s.get("flows", []) if f.get("kind") == "ping"), {})
    c = s.get("cluster") or {}
    return {"wall_s": wall, "build_s": s.get("build_s"), "agents_build_s": (c.get("timings_s") or {}).get("build"),
            "teardown_s": s.get("teardown_s"), "late_p50_ms": late.get("late_ms_median"),
            "late_p95_ms": late.get("late_ms_p95"), "late_max_ms": late.get("late_ms_max"),
            "apply_p95_ms": late.get("apply_ms_p95"), "steps": late.get("steps"),
            "rtt_err_p50_ms": (flow.get("error_ms") or {}).get("p50"), "lost": flow.get("lost"),
            "sent": flow.get("sent"), "cross_ends": [b.get("cross_ends") for b in c.get("builds", [])],
            "late_p95_by_host": [h.get("late_ms_p95") for h in c.get("lateness_by_host", [])]}


def beside() -> str:
    """The five processes with the highest CPU share over their lives (ps), to say what ran beside."""
    r = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"], capture_output=True, text=True,
                       check=False)
    return ", ".join(" ".join(line.split()) for line in r.stdout.splitlines()[1:6])


def fmt(x: Any, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--duration", type=float, default=40.0)
    ap.add_argument("--placement", choices=("plane", "partition"), default="plane")
    ap.add_argument("--idle-s", type=float, default=20.0)
    ap.add_argument("--rate-pps", type=float, default=10.0)
    ap.add_argument("--run-id", default="h2b", help="prefix of the runs' ids (and the lab's)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1
    print(f"# {platform.node()} kernel {platform.release()}, {os.cpu_count()} cores, load "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    print(f"# beside: {beside()}")
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    scen = work / "scenario.toml"
    scen.write_text(scenario_text(args.rate_pps) + f'\n[cluster]\nplacement = "{args.placement}"\n')
    tl_path = work / "timeline.npz"
    subprocess.run([SATNETEM, "plan", str(scen), "-o", str(tl_path)], check=True, stdout=subprocess.DEVNULL)
    from topologies.timeline import Timeline

    tl = Timeline.load(tl_path)
    print(f"timeline: {len(tl.nodes)} nodes, {tl.n_links} link slots, {tl.n_steps} steps of {tl.step_s:g} s; "
          f"playing {args.duration:g} s")
    for s in summary(tl, 3):
        print(f"  {describe_one(s)}")
    common = [str(scen), "--timeline", str(tl_path), "--duration", f"{args.duration:g}"]
    single: list[dict[str, Any]] = []
    multi: list[dict[str, Any]] = []
    with FakeHosts(f"{args.run_id}-lab", LabConfig(n_hosts=3, delay_ms=1.0)) as lab:
        with RayLab(lab) as rl:
            print(f"ray started on 3 fake hosts: head {rl.start_s['head']:.1f} s, "
                  f"workers {rl.start_s['workers']:.1f} s")
            idle = ray_idle(lab, args.idle_s)
            print(f"ray idle over {args.idle_s:g} s: {idle['processes']} processes, "
                  f"{idle['cpu_pct_of_one_core']:.1f} % of one core, RSS {idle['rss_mb']:.0f} MB")
            for r in range(args.runs):
                single.append(one_run([*common, "--run-id", f"{args.run_id}-s{r}"], work / f"single{r}",
                                      subprocess.Popen, None, work / f"single{r}.log"))
                print(f"one host   run {r}: {json.dumps(single[-1])}", flush=True)

                def popen(argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
                    return lab.popen(lab.host_name(0), argv, cwd=str(work), **kw)

                multi.append(one_run([*common, "--cluster", rl.head, "--run-id", f"{args.run_id}-c{r}"],
                                     work / f"cluster{r}", popen, rl.env(), work / f"cluster{r}.log"))
                print(f"three hosts run {r}: {json.dumps(multi[-1])}", flush=True)
            idle_after = ray_idle(lab, min(args.idle_s, 10.0))
    print()
    print(f"{'':<22}{'one host':>12}{'3 hosts':>12}{'ratio':>8}")
    for key, label in (("build_s", "bring-up s"), ("agents_build_s", "  agents' build s"),
                       ("late_p50_ms", "step late p50 ms"), ("late_p95_ms", "step late p95 ms"),
                       ("late_max_ms", "step late max ms"), ("apply_p95_ms", "apply p95 ms"),
                       ("teardown_s", "teardown s"), ("rtt_err_p50_ms", "ping RTT err p50 ms")):
        a = [x[key] for x in single if x.get(key) is not None]
        b = [x[key] for x in multi if x.get(key) is not None]
        ma = statistics.median(a) if a else None
        mb = statistics.median(b) if b else None
        ratio = f"{mb / ma:.2f}" if ma and mb is not None and key in ("build_s", "late_p95_ms", "late_p50_ms",
                                                                       "apply_p95_ms", "teardown_s") else ""
        print(f"{label:<22}{fmt(ma):>12}{fmt(mb):>12}{ratio:>8}")
    print(f"ray idle after the runs: {idle_after['processes']} processes, {idle_after['cpu_pct_of_one_core']:.1f} % of "
          f"one core, RSS {idle_after['rss_mb']:.0f} MB")
    print(f"# load at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}, "
          f"{time.strftime('%H:%M:%S UTC', time.gmtime())}; beside: {beside()}")
    print(f"results under {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
