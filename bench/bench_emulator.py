"""Benchmark: bring-up, teardown, memory and per-step apply time of the live network, side by side
with the same network built and updated through stock Mininet calls.

    sudo .venv/bin/python bench/bench_emulator.py            # 72x22 +Grid (1,584 sats), 20 gateways
    sudo .venv/bin/python bench/bench_emulator.py --small    # 12x8, 4 gateways: a quick run
    options: --shaper null|userspace  --steps 60  --no-stock  --runs 3 (medians over runs)
             --speed 1 (steps played in real time, as `satnetem run` does; 0: back to back, no time
             between steps for moving antennas' spare veth pairs ahead)

Synthetic timeline (numpy, no orbits): 3,168 ISLs (fore and right of every satellite, wrapping), one
antenna per gateway, one host per gateway. Every step: a rotating tenth of the inter-plane ISLs change
delay by 0.05 ms (above the 0.01 ms tolerance), one ISL goes into OUTAGE and the previous one comes
back, and two gateways hand over to the next satellite of their plane.

Stock side (what stock Mininet 2.3 offers here): ``Mininet(build=False)``, ``addHost`` per node (its
shells start one at a time), ``addLink(cls=Link)`` per link slot (TCLink would add netem, which this
kernel lacks), ``net.stop()`` for teardown. Its step update runs one ``tc qdisc change ... tbf rate``
process per changed link direction (the rate is all tbf can express; stock Mininet's TCLink.config
does the same kind of tc call per change) and one ``ip link set ... netns`` per handover; it has no
routing, so its figures are a lower bound for stock.

satnetem side: steps are played by the emulator's own clock (:class:`emulator.clock.Playback`), which
between steps calls ``prepare_ahead`` (moves the spare veth pairs of antennas to their next satellites);
the step figures are the time to apply each step, the "ahead" figures the work done between steps.

Targets: bring-up <= 20 s, teardown <= 10 s, memory <= 3 GB, step apply p95 <= 100 ms.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topologies.timeline import Node, Reason, Timeline


def synthetic_timeline(planes: int, per_plane: int, n_gw: int, n_steps: int, seed: int = 1) -> Timeline:
    """+Grid constellation with gateways and hosts, and the step dynamics described above."""
    rng = np.random.default_rng(seed)
    n_sat = planes * per_plane
    nodes = [Node(f"sat-{p}-{s}", "sat", {"plane": p, "slot": s}) for p in range(planes) for s in range(per_plane)]
    nodes += [Node(f"gw-{g}", "gateway", {"antennas": 1}) for g in range(n_gw)]
    nodes += [Node(f"h-{g}", "host", {"gateway": f"gw-{g}"}) for g in range(n_gw)]
    idx = np.arange(n_sat).reshape(planes, per_plane)
    intra_a, intra_b = idx.ravel(), np.roll(idx, -1, axis=1).ravel()
    inter_a, inter_b = idx.ravel(), np.roll(idx, -1, axis=0).ravel()
    gw = n_sat + np.arange(n_gw)
    gw_plane = rng.integers(0, planes, n_gw)
    gw_slot = rng.integers(0, per_plane, n_gw)
    hosts = n_sat + n_gw + np.arange(n_gw)
    link_a = np.concatenate([intra_a, inter_a, gw, hosts]).astype(np.int32)
    b0 = np.concatenate([intra_b, inter_b, idx[gw_plane, gw_slot], gw])
    n_isl = 2 * n_sat
    cls = np.array([0] * n_isl + [1] * n_gw + [2] * n_gw, np.uint8)
    role = np.array([0] * n_sat + [1] * n_sat + [2] * n_gw + [3] * n_gw, np.uint8)
    n_links = len(link_a)
    peer = np.repeat(b0[:, None], n_steps, axis=1).astype(np.int32)
    state = np.zeros((n_links, n_steps), np.uint8)
    delay = np.empty((n_links, n_steps), np.float32)
    delay[:n_sat] = 3.0
    delay[n_sat:n_isl] = (2.0 + 2.0 * rng.random(n_sat))[:, None]
    delay[n_isl:] = 2.0
    delay[n_isl + n_gw:] = 0.05
    for k in range(1, n_steps):
        delay[:, k] = delay[:, k - 1]
        tenth = np.arange(n_sat, n_isl)[(np.arange(n_sat) % 10) == (k % 10)]
        delay[tenth, k] += 0.05
        state[rng.integers(0, n_isl), k] = Reason.OUTAGE
        for g in ((2 * k) % n_gw, (2 * k + 1) % n_gw):
            gw_slot[g] = (gw_slot[g] + 1) % per_plane
        peer[n_isl:n_isl + n_gw, k] = idx[gw_plane, gw_slot]
    return Timeline(start=datetime(2024, 1, 1, tzinfo=UTC), step_s=1.0, nodes=nodes, link_a=link_a,
                    link_class=cls, link_role=role, state=state, peer=peer, delay_ms=delay,
                    rate_mbps=np.full((n_links, n_steps), 100.0, np.float32),
                    loss_pct=np.zeros((n_links, n_steps), np.float32),
                    sat_lla=np.zeros((n_sat, n_steps, 3), np.float32))


def memory_of(pids: set[int]) -> tuple[float, float]:
    """(sum of RSS, sum of PSS) of ``pids``, MB. RSS counts shared pages once per process; PSS shares them."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            pass
    return rss / 1024, pss / 1024


def _cpu_times() -> tuple[int, int]:
    """(idle + iowait, total) jiffies of all CPUs since boot."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return f[3] + f[4], sum(f)


def settle(idle_pct: float = 85.0, window_s: float = 1.0, max_s: float = 120.0) -> float:
    """Wait until the CPUs are at least ``idle_pct`` idle over ``window_s``; return the seconds waited.

    The kernel frees deleted namespaces (and the veths in them) in a workqueue after the last reference
    is gone, i.e. after teardown returns: a run started meanwhile competes with it, and its figures
    would be the previous run's cleanup as much as its own.
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_s:
        i0, n0 = _cpu_times()
        time.sleep(window_s)
        i1, n1 = _cpu_times()
        if n1 > n0 and 100.0 * (i1 - i0) / (n1 - n0) >= idle_pct:
            break
    return time.perf_counter() - t0


class NullShaper:
    name = "null"

    def prepare_node(self, node, ns_path, ipr):
        pass

    def prepare_nodes(self, nodes, ipr_of, all_ports_held=False):
        pass

    def set(self, items, ipr_of):
        pass

    def forget(self, port):
        pass

    def close(self):
        pass


def bench_satnetem(tl: Timeline, shaper_kind: str, n_steps: int, speed: float,
                   ping_pair: tuple[str, str] = ("h-0", "h-1"), on_step=None, route_switch: str = "in-place") -> dict:
    """Build ``tl``, play ``n_steps`` steps at ``speed``, ping ``ping_pair[0]`` -> ``ping_pair[1]``, tear down.

    ``on_step()`` (optional) is called after each step (e.g. to sample memory)."""
    from emulator.clean import find_ours
    from emulator.clock import Playback
    from emulator.network import Emulation

    if shaper_kind == "null":
        shaper = NullShaper()
    else:
        from emulator.shaping import make_shaper
        shaper, _ = make_shaper(shaper_kind)
    emu = Emulation(tl, shaper, "shortest-delay", run_id=f"bench-{os.getpid()}", route_switch=route_switch)
    t = time.perf_counter()
    try:
        emu.build()
        up_s = time.perf_counter() - t
        pids, _ = find_ours(emu.run_id)
        pids |= {os.getpid()} | ({shaper.pid} if getattr(shaper, "pid", None) else set())
        rss, pss = memory_of(pids)
        steps = []
        counts = []
        phases: dict[str, list[float]] = {}
        timings = []

        def apply(k: int):
            s = emu.apply_step(k)
            steps.append(s.timings_ms["total"])
            timings.append(s.timings_ms)
            for key, v in s.timings_ms.items():
                phases.setdefault(key, []).append(v)
            counts.append((s.links_up, s.links_down, s.handovers, s.moves_in_step, s.param_changes,
                           s.routes_changed, s.routes_ahead))
            if on_step is not None:
                on_step()
            return s

        play = Playback(tl.step_s, 0, n_steps, apply, speed if speed > 0 else 1e9, ahead=emu.prepare_ahead)
        play.run()
        ahead = [r.ahead_ms for r in play.records[:-1]]
        ping = emu.node(ping_pair[0]).cmd(f"ping -c1 -W2 {emu.address_of(ping_pair[1])}")
    finally:
        t = time.perf_counter()
        emu.stop()
        down_s = time.perf_counter() - t
    cleanup_s = settle()
    return {"bringup_s": up_s, "teardown_s": down_s, "rss_mb": rss, "pss_mb": pss, "steps_ms": steps,
            "kernel_cleanup_s": cleanup_s, "ahead_ms": ahead,
            "build_ms": emu.build_timings_ms, "counts": np.mean(counts, axis=0).round(1).tolist(),
            "phases_ms": {k: float(np.median(v)) for k, v in phases.items() if k != "total"},
            "slowest": sorted(timings, key=lambda t: -t["total"])[:3],
            "ping_ok": " 0% packet loss" in ping}


def bench_stock(tl: Timeline, n_steps: int) -> dict:
    from mininet.link import Link
    from mininet.net import Mininet

    from emulator.addressing import AddressPlan

    addr = AddressPlan().assign(tl)
    net = Mininet(topo=None, build=False, controller=None, autoSetMacs=False)
    t = time.perf_counter()
    try:
        for nd in tl.nodes:
            net.addHost(nd.name)
        far = np.where(tl.peer[:, 0] >= 0, tl.peer[:, 0], tl.link_a)
        for l in range(tl.n_links):
            net.addLink(tl.nodes[tl.link_a[l]].name, tl.nodes[far[l]].name, cls=Link,
                        intfName1=addr.ifname_a[l], intfName2=addr.ifname_b[l])
        for h in net.hosts:  # rate limit on every interface so that updates can change it
            h.cmd("for i in $(ls /sys/class/net | grep -v lo); do "
                  "tc qdisc add dev $i root tbf rate 100mbit burst 15k latency 50ms; done")
        up_s = time.perf_counter() - t
        pids = {h.pid for h in net.hosts} | {os.getpid()}
        rss, pss = memory_of(pids)
        steps = []
        names = [nd.name for nd in tl.nodes]
        cur_far = far.copy()
        for k in range(1, n_steps + 1):
            t1 = time.perf_counter()
            d_links = np.flatnonzero(np.abs(tl.delay_ms[:, k] - tl.delay_ms[:, k - 1]) > 0.01)
            for l in d_links.tolist():
                for node, ifn in ((names[tl.link_a[l]], addr.ifname_a[l]), (names[cur_far[l]], addr.ifname_b[l])):
                    net[node].cmd(f"tc qdisc change dev {ifn} root tbf rate {tl.rate_mbps[l, k]:.0f}mbit "
                                  "burst 15k latency 50ms")
            for l in np.flatnonzero(tl.state[:, k] != tl.state[:, k - 1]).tolist():
                updown = "up" if tl.state[l, k] == 0 else "down"
                net[names[tl.link_a[l]]].cmd(f"ip link set {addr.ifname_a[l]} {updown}")
                net[names[cur_far[l]]].cmd(f"ip link set {addr.ifname_b[l]} {updown}")
            for l in np.flatnonzero(tl.peer[:, k] != tl.peer[:, k - 1]).tolist():
                new = int(tl.peer[l, k]) if tl.peer[l, k] >= 0 else int(tl.link_a[l])
                net[names[cur_far[l]]].cmd(f"ip link set {addr.ifname_b[l]} netns {net[names[new]].pid}")
                net[names[new]].cmd(f"ip link set {addr.ifname_b[l]} up")
                cur_far[l] = new
            steps.append((time.perf_counter() - t1) * 1e3)
    finally:
        t = time.perf_counter()
        net.stop()
        down_s = time.perf_counter() - t
    return {"bringup_s": up_s, "teardown_s": down_s, "rss_mb": rss, "pss_mb": pss, "steps_ms": steps,
            "kernel_cleanup_s": settle()}


def describe(name: str, r: dict) -> str:
    s = np.array(r["steps_ms"])
    return (f"{name:10s} bring-up {r['bringup_s']:7.2f} s   teardown {r['teardown_s']:6.2f} s "
            f"(+ kernel busy {r['kernel_cleanup_s']:4.1f} s after)   "
            f"memory RSS {r['rss_mb']:8.0f} MB (PSS {r['pss_mb']:6.0f} MB)   "
            f"step median {np.median(s):8.1f} ms  p95 {np.percentile(s, 95):8.1f} ms")


def summary(runs: list[dict]) -> dict:
    """Medians over runs of the figures :func:`describe` prints (step median/p95 per run first)."""
    steps = [np.array(r["steps_ms"]) for r in runs]
    return {"bringup_s": float(np.median([r["bringup_s"] for r in runs])),
            "teardown_s": float(np.median([r["teardown_s"] for r in runs])),
            "rss_mb": float(np.median([r["rss_mb"] for r in runs])),
            "pss_mb": float(np.median([r["pss_mb"] for r in runs])),
            "step_median_ms": float(np.median([np.median(s) for s in steps])),
            "step_p95_ms": float(np.median([np.percentile(s, 95) for s in steps]))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="12x8 satellites, 4 gateways")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--shaper", default="userspace", choices=("null", "userspace", "netem", "auto"))
    p.add_argument("--no-stock", action="store_true", help="skip the stock Mininet side")
    p.add_argument("--runs", type=int, default=1, help="satnetem runs (medians printed when > 1)")
    p.add_argument("--speed", type=float, default=1.0,
                   help="playback speed of the satnetem side (1: real time; 0: back to back)")
    args = p.parse_args()
    if args.runs < 1 or args.steps < 1:
        sys.exit("--runs and --steps must be >= 1")
    if not args.speed >= 0:
        sys.exit("--speed must be >= 0")
    if os.geteuid() != 0:
        sys.exit("bench_emulator needs root (it builds network namespaces)")
    planes, per, gws = (12, 8, 4) if args.small else (72, 22, 20)
    tl = synthetic_timeline(planes, per, gws, args.steps + 1)
    print(f"machine: {platform.node()} {platform.machine()} {_cpu_model()}, {os.cpu_count()} cores, "
          f"{_mem_total_gb():.1f} GB, kernel {platform.release()}, python {platform.python_version()}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print(f"date:    {datetime.now(UTC).isoformat(timespec='seconds')}")
    print(f"network: {planes}x{per} = {planes * per} satellites, {gws} gateways, {gws} hosts, "
          f"{len(tl.nodes)} nodes, {tl.n_links} links; {args.steps} steps; shaper {args.shaper}; "
          f"satnetem steps played {'back to back' if args.speed == 0 else f'at speed {args.speed:g}'}")
    waited = settle()
    print(f"waited {waited:.0f} s for the CPUs to be >= 85% idle; before each run and after each teardown "
          "the bench waits the same way (the kernel frees namespaces after teardown returns)")
    runs = []
    for i in range(args.runs):
        ours = bench_satnetem(tl, args.shaper, args.steps, args.speed)
        runs.append(ours)
        print(describe("satnetem" if args.runs == 1 else f"run {i + 1}", ours))
        print(f"           build phases (ms): {', '.join(f'{k} {v:.0f}' for k, v in ours['build_ms'].items())}")
        print(f"           step phases, median (ms): "
              f"{', '.join(f'{k} {v:.1f}' for k, v in ours['phases_ms'].items())}")
        for ph in ours["slowest"]:
            print(f"           slow step {ph['total']:6.1f} ms: "
                  f"{', '.join(f'{k} {v:.1f}' for k, v in ph.items() if k != 'total')}")
        print(f"           mean per step (links up, down, handovers, antenna moves in the step, param changes, "
              f"routes changed at the step, routes sent ahead): {ours['counts']}; h-0 -> h-1 ping after the run: "
              f"{'ok' if ours['ping_ok'] else 'FAILED'}")
        if ours["ahead_ms"]:
            a = np.array(ours["ahead_ms"])
            print(f"           between steps (prepare_ahead, off the clock): median {np.median(a):.1f} ms, "
                  f"p95 {np.percentile(a, 95):.1f} ms, max {a.max():.1f} ms")
    m = summary(runs)
    if args.runs > 1:
        print(f"satnetem, medians of {args.runs} runs: bring-up {m['bringup_s']:.2f} s, teardown "
              f"{m['teardown_s']:.2f} s, RSS {m['rss_mb']:.0f} MB (PSS {m['pss_mb']:.0f} MB), step median "
              f"{m['step_median_ms']:.1f} ms, step p95 {m['step_p95_ms']:.1f} ms")
    print(f"targets: bring-up <= 20 s: {_ok(m['bringup_s'] <= 20)}, teardown <= 10 s: "
          f"{_ok(m['teardown_s'] <= 10)}, memory (PSS) <= 3 GB: {_ok(m['pss_mb'] <= 3072)}, step p95 <= 100 ms: "
          f"{_ok(m['step_p95_ms'] <= 100)}")
    if not args.no_stock:
        stock = bench_stock(tl, args.steps)
        print(describe("stock", stock))
        st = summary([stock])
        print("ratios (stock / satnetem; > 1: satnetem is better): "
              f"bring-up {st['bringup_s'] / m['bringup_s']:.1f}x, teardown {st['teardown_s'] / m['teardown_s']:.1f}x "
              f"({_down_total(stock) / np.median([_down_total(r) for r in runs]):.1f}x counting the kernel's "
              "cleanup after it), "
              f"RSS {st['rss_mb'] / m['rss_mb']:.2f}x, PSS {st['pss_mb'] / m['pss_mb']:.2f}x, "
              f"step median {st['step_median_ms'] / m['step_median_ms']:.1f}x, "
              f"step p95 {st['step_p95_ms'] / m['step_p95_ms']:.1f}x "
              "(stock's step does no routing: its step ratio is a lower bound)")


def _down_total(r: dict) -> float:
    """Teardown plus the time the kernel stayed busy freeing namespaces after it, s."""
    return r["teardown_s"] + r["kernel_cleanup_s"]


def _ok(good: bool) -> str:
    return "met" if good else "MISSED"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def _mem_total_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


if __name__ == "__main__":
    main()
