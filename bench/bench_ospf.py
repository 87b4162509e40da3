"""Benchmark: OSPF in BIRD daemons on Walker constellations of growing size.

    sudo .venv/bin/python bench/bench_ospf.py                        # 10x10, 20x20, 36x22, 72x22
    sudo .venv/bin/python bench/bench_ospf.py --sizes 10x10 --steps 10

For each size: a scenario with one [[constellation.shells]] entry (550 km, 53 deg, P planes x S
satellites) and two ground sites (London, New York, a host behind each) is planned with
topologies.plan.plan_scenario; the emulation is built with the ``ospf`` protocol and no shaping
(the control plane is measured, not RTTs), then it prints:

* build time, and convergence time: from the start of build() until every router's BIRD has a route
  for every router loopback and host subnet (``show route count``);
* memory: total and per-daemon resident memory of the BIRD processes;
* CPU of the daemons (cores) while idle after convergence and while the timeline plays in real time
  (every step pushes the cost changes of moving ISLs);
* a cut: one ISL on the live London -> New York path goes into outage at a step; time from applying
  that step to the first ping reply on the new path (pings every 10 ms).

Sizes that fail (time-out, memory) are reported and the benchmark goes on to stop cleanly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topologies.timeline import LINK_CLASSES, Reason

_ISL = LINK_CLASSES.index("isl")

SCENARIO = """\
name = "ospf-bench-{p}x{s}"
seed = 1
[time]
start = "2023-07-18T12:00:00Z"
duration_s = {duration}
step_s = 1.0
[[constellation.shells]]
altitude_km = 550.0
inclination_deg = 53.0
planes = {p}
sats_per_plane = {s}
phasing = 1
[[ground.sites]]
name = "gs-london"
lat_deg = 51.5074
lon_deg = -0.1278
[[ground.sites]]
name = "gs-new-york"
lat_deg = 40.7128
lon_deg = -74.0060
"""


class NullShaper:
    name = "null"

    def prepare_node(self, node, ns_path, ipr):
        pass

    def set(self, items, ipr_of):
        pass

    def forget(self, port):
        pass

    def close(self):
        pass


def cpu_s(pids) -> float:
    """User + system CPU time of ``pids``, s."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def route_counts(daemons, names) -> dict[str, int]:
    """Networks in each daemon's table (``show route count``)."""
    out = {}
    for n in names:
        try:
            text = daemons.command(n, "show route count")
        except Exception:  # noqa: BLE001 - a daemon busy at start-up counts as not converged
            out[n] = -1
            continue
        m = re.search(r"for (\d+) networks", text)
        out[n] = int(m.group(1)) if m else -1
    return out


def live_path(emu, src: str, dst_addr: str, max_hops: int = 200) -> list[tuple[str, str]]:
    """(node, output interface) hops the kernels forward on from router ``src`` to ``dst_addr``."""
    hops, node = [], src
    ends = {}
    a, snap = emu.ends, emu.applied  # the veth pair that carries each slot now
    far = np.where(snap.peer >= 0, snap.peer, emu.link_a)
    for l in range(emu.timeline.n_links):
        ends[(emu.names[int(emu.link_a[l])], a.ifname_a[l])] = (l, emu.names[int(far[l])])
        ends[(emu.names[int(far[l])], a.ifname_b[l])] = (l, emu.names[int(emu.link_a[l])])
    while len(hops) < max_hops:
        r = json.loads(emu.node(node).cmd(f"ip -j route get {dst_addr}") or "[]")
        if not r or "gateway" not in r[0]:
            return hops
        l, nxt = ends[(node, r[0]["dev"])]
        hops.append((node, l))
        node = nxt
    return hops


def bench_size(p: int, s: int, steps: int, converge_timeout_s: float) -> dict:
    import routing.ospf  # noqa: F401
    from emulator.network import Emulation
    from topologies.plan import plan_scenario
    from topologies.scenario import parse_scenario

    res: dict = {"size": f"{p}x{s}", "sats": p * s}
    t = time.perf_counter()
    tl = plan_scenario(parse_scenario(SCENARIO.format(p=p, s=s, duration=steps + 40)))
    res["plan_s"] = round(time.perf_counter() - t, 1)
    emu = Emulation(tl, NullShaper(), "ospf", run_id=f"ospfb-{os.getpid()}")
    try:
        t0 = time.perf_counter()
        emu.build()
        res["build_s"] = round(time.perf_counter() - t0, 1)
        d = emu.protocol.daemons
        routers = [emu.names[i] for i in np.flatnonzero(emu.is_router)]
        res["routers"] = len(routers)
        n_hosts = int((~emu.is_router).sum())
        want = len(routers) + n_hosts
        pids = list(d.pids.values())
        while True:
            counts = route_counts(d, routers)
            done = sum(c >= want for c in counts.values())
            if done == len(routers):
                break
            if time.perf_counter() - t0 > converge_timeout_s:
                res["converged"] = f"no: {done}/{len(routers)} routers complete after {converge_timeout_s:.0f} s"
                return res
            time.sleep(1.0)
        res["converge_s"] = round(time.perf_counter() - t0, 1)
        rss = d.rss_kb()
        res["bird_rss_total_mb"] = round(sum(rss.values()) / 1024, 1)
        res["bird_rss_per_daemon_mb"] = round(np.mean(list(rss.values())) / 1024, 2)
        # idle CPU after convergence (hellos, nothing changing)
        c0, w0 = cpu_s(pids), time.perf_counter()
        time.sleep(5)
        res["idle_cpu_cores"] = round((cpu_s(pids) - c0) / (time.perf_counter() - w0), 2)
        src, dst = "h-london", "h-new-york"
        dst_addr = emu.address_of(dst)
        ping0 = emu.node(src).cmd(f"ping -n -c 3 -i 0.2 -W 1 {dst_addr}")
        res["ping_before"] = re.search(r"(\d+) received", ping0).group(1) + "/3"
        # play the timeline in real time; one ISL of the live path goes down half way
        gw = "gs-london" if "gs-london" in emu.names else emu.names[int(emu.link_a[emu.addr.access_link[
            tl.node_index(src)]])]
        path = live_path(emu, gw, dst_addr)
        isls = [l for _, l in path if tl.link_class[l] == _ISL]
        cut_step = 1 + steps // 2
        cut = isls[len(isls) // 2] if isls else None
        if cut is not None:
            tl.state[cut, cut_step:] = Reason.OUTAGE
        res["path_isl_hops"] = len(isls)
        pinger = emu.node(src).popen(["ping", "-D", "-n", "-i", "0.01", "-W", "1", dst_addr], text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        apply_ms, daemon_ms, t_cut = [], [], None
        c0, w0 = cpu_s(pids), time.perf_counter()
        for k in range(1, steps + 1):
            due = w0 + (k - 1) * tl.step_s
            time.sleep(max(0.0, due - time.perf_counter()))
            if k == cut_step:
                t_cut = time.time()
            st = emu.apply_step(k)
            apply_ms.append(st.timings_ms["total"])
            daemon_ms.append(st.timings_ms.get("daemons", 0.0))
        time.sleep(max(0.0, w0 + steps * tl.step_s - time.perf_counter()))
        res["play_cpu_cores"] = round((cpu_s(pids) - c0) / (time.perf_counter() - w0), 2)
        res["apply_ms_p50_p95"] = [round(float(np.percentile(apply_ms, q)), 1) for q in (50, 95)]
        res["daemons_ms_p50_p95"] = [round(float(np.percentile(daemon_ms, q)), 1) for q in (50, 95)]
        time.sleep(3)
        pinger.send_signal(signal.SIGINT)
        out, _ = pinger.communicate(timeout=10)
        rx = np.array([float(x) for x in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", out, re.MULTILINE)])
        if t_cut is not None and len(rx):
            after = rx[rx > t_cut]
            if len(after):
                gaps = np.diff(np.concatenate([[t_cut], after]))
                k = int(np.argmax(gaps))
                res["cut_first_reply_s"] = round(float(after[k] - t_cut), 2) if gaps[k] > 0.05 else 0.0
            else:
                res["cut_first_reply_s"] = "no reply after the cut"
            m = re.search(r"(\d+) packets transmitted", out)
            res["ping_replies_of_sent"] = f"{len(rx)}/{m.group(1) if m else '?'}"
        return res
    finally:
        t = time.perf_counter()
        emu.stop()
        res["stop_s"] = round(time.perf_counter() - t, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10x10,20x20,36x22,72x22")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--converge-timeout-s", type=float, default=600.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if os.geteuid() != 0:
        sys.exit("needs root (builds namespaces)")
    print(f"{os.cpu_count()} cores, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB")
    for size in args.sizes.split(","):
        p, s = (int(x) for x in size.split("x"))
        try:
            res = bench_size(p, s, args.steps, args.converge_timeout_s)
        except Exception as e:  # noqa: BLE001 - report and go on with the next size
            res = {"size": size, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
