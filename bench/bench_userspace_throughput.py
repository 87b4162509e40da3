"""Throughput of the userspace shaping backend: iperf3 TCP and UDP across 4 shaped hops (5 ms per direction
per hop, 10000 Mbit/s so the rate does not limit) against the same path on plain veths.

Two ways of holding packets are compared: ``peer`` (each port names the other end of its veth, packets are
held as they arrive there -- what the emulator does) and ``egress`` (held as they leave the sender, where
TCP Small Queues throttles TCP). Needs root and the compiled daemon (./install.sh builds it). Prints
Mbit/s, packets/s, the CPU use of each delay daemon shard (% of one core) and its release lateness
(p50/p99/max over each run). Run:

    sudo .venv/bin/python bench/bench_userspace_throughput.py [--runs 3] [--seconds 5] [--modes plain,peer,egress]
        [--shards N] [--rt-priority P] [--udp-search] [--watch auto|on|off]

``--udp-search`` also finds, per shaped mode, the highest UDP rate that arrives with zero loss: the
offered rate doubles from 50 Mbit/s until a run loses a datagram, then is bisected (6 runs); each run's
receiver count is iperf3's own, and a run counts as zero loss only if not one datagram was lost.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emulator.netns import entered, iproute_in
from emulator.shaping.base import LinkShape, Port
from emulator.shaping.delayd import DEFAULT_RT_PRIORITY
from emulator.shaping.userspace import UserspaceShaper

NODES = ("h1", "r1", "r2", "r3", "h2")
DST = "10.78.4.2"
UDP_BYTES = 1400  # UDP payload per datagram
TCP_BUFFERS = "4096 131072 33554432"  # min, default, max bytes of the end hosts' TCP socket buffers


def build(tag: str):
    names = {n: f"{tag}-{n}" for n in NODES}
    iprs, ends, peered = {}, [], []
    for n in NODES:
        subprocess.run(["ip", "netns", "add", names[n]], check=True)
        iprs[n] = iproute_in(f"/run/netns/{names[n]}", n)
    for i in range(4):
        left, right = NODES[i], NODES[i + 1]
        lif, rif = f"{left}-{right}", f"{right}-{left}"
        iprs[left].link("add", ifname=lif, kind="veth", peer={"ifname": rif, "net_ns_fd": names[right]})
        for node, ifname, host in ((left, lif, 1), (right, rif, 2)):
            idx = iprs[node].link_lookup(ifname=ifname)[0]
            iprs[node].addr("add", index=idx, address=f"10.78.{i + 1}.{host}", prefixlen=24)
            iprs[node].link("set", index=idx, state="up")
            ends.append(Port(node, f"/run/netns/{names[node]}", ifname, idx))
        left_end, right_end = ends[-2:]
        peered += [replace(left_end, peer=right_end), replace(right_end, peer=left_end)]
    for i, n in enumerate(NODES):
        iprs[n].link("set", index=iprs[n].link_lookup(ifname="lo")[0], state="up")
        if i > 0:  # towards h1
            for j in range(1, i):
                iprs[n].route("add", dst=f"10.78.{j}.0/24", gateway=f"10.78.{i}.1")
        if i < 4:  # towards h2
            for j in range(i + 2, 5):
                iprs[n].route("add", dst=f"10.78.{j}.0/24", gateway=f"10.78.{i + 1}.2")
        with entered(f"/run/netns/{names[n]}"), open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1")
        if n in ("h1", "h2"):
            # 2 Gbit/s over a 40 ms RTT is a 10 MB window: more than Linux's default socket buffer maxima
            # (tcp_wmem 4 MB, tcp_rmem 6 MB) let TCP autotune to. Per namespace, so the host is untouched.
            for key in ("tcp_rmem", "tcp_wmem"):
                with entered(f"/run/netns/{names[n]}"), open(f"/proc/sys/net/ipv4/{key}", "w") as f:
                    f.write(TCP_BUFFERS)
    return names, iprs, ends, peered


def teardown(names, iprs) -> None:
    for ipr in iprs.values():
        ipr.close()
    for name in names.values():
        subprocess.run(["ip", "netns", "del", name], check=False)


def iperf(names, udp: bool, seconds: int, port: int, udp_mbps: float = 1000.0) -> dict:
    server = subprocess.Popen(["ip", "netns", "exec", names["h2"], "iperf3", "-s", "-1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.4)
        argv = ["ip", "netns", "exec", names["h1"], "iperf3", "-c", DST, "-p", str(port), "-t", str(seconds),
                "-J"]
        if not udp:
            argv += ["-O", "1"]  # skip slow start; for UDP iperf3's loss count would include omitted packets
        else:
            argv += ["-u", "-b", f"{udp_mbps:g}M", "-l", str(UDP_BYTES)]
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    finally:
        server.kill()
        server.wait()
    end = json.loads(out)["end"]
    if udp:
        # The receiver's own counts: datagrams that arrived, per second.
        s = end["sum_received"]
        pps = (s["packets"] - s["lost_packets"]) / s["seconds"]
        return {"mbps": pps * UDP_BYTES * 8 / 1e6, "pps": pps, "lost_pct": s["lost_percent"]}
    s = end["sum_received"]
    return {"mbps": s["bits_per_second"] / 1e6, "pps": None, "lost_pct": None}


def udp_rcvbuf_errors(netns: str) -> int:
    """UDP datagrams the namespace's sockets dropped for a full receive buffer (/proc/net/snmp there)."""
    out = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"], capture_output=True, text=True,
                         check=True).stdout
    head, vals = [line.split()[1:] for line in out.splitlines() if line.startswith("Udp:")][:2]
    return int(vals[head.index("RcvbufErrors")])


def udp_zero_loss(names, sh, seconds: int) -> dict:
    """The highest offered UDP rate (Mbit/s) at which not one datagram was lost, and its packets/s and the
    daemon's CPU per shard (% of a core) at that rate: doubling from 50 Mbit/s, then 6 bisection runs."""
    def trial(mbps: float, port: int) -> dict:
        t0 = time.monotonic()
        st0 = sh.stats() if sh else None
        rcvbuf0 = udp_rcvbuf_errors(names["h2"])
        r = iperf(names, True, seconds, port, mbps)
        # where the losses were: the receiver's socket buffer, or the daemon (pool overflow, its drops)
        r["h2_rcvbuf_errors"] = udp_rcvbuf_errors(names["h2"]) - rcvbuf0
        if sh and st0:
            st1, dt = sh.stats(), time.monotonic() - t0
            r["daemon_cpu_pct"] = [round(100 * (b - a) / dt, 1)
                                   for a, b in zip(st0["cpu_s_per_shard"], st1["cpu_s_per_shard"])]
            r["daemon_dropped"] = st1["dropped"] - st0["dropped"]
        r["offered_mbps"] = mbps
        print(f"    udp {mbps:.0f} Mbit/s offered: {r}")
        return r
    good: dict | None = None
    lo, hi, port = 0.0, 50.0, 5600
    while hi <= 20000:
        r = trial(hi, port)
        port += 1
        if r["lost_pct"] > 0:
            break
        good, lo, hi = r, hi, hi * 2
    for _ in range(6):
        mid = (lo + hi) / 2
        r = trial(mid, port)
        port += 1
        if r["lost_pct"] > 0:
            hi = mid
        else:
            good, lo = r, mid
    return good or {"mbps": 0.0, "pps": 0.0, "lost_pct": None, "offered_mbps": 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--modes", default="plain,peer,egress",
                    help="comma-separated: plain (no shaping), peer (hold at the receiving end), egress")
    ap.add_argument("--protos", default="tcp,udp", help="comma-separated: tcp, udp (offered --udp-mbps)")
    ap.add_argument("--udp-mbps", default="1000,100", help="comma-separated offered UDP rates, Mbit/s")
    ap.add_argument("--shards", type=int, default=None, help="delay daemon processes (default: one per core)")
    ap.add_argument("--udp-search", action="store_true",
                    help="find the highest UDP rate with zero loss per mode (doubling, then bisection)")
    ap.add_argument("--rt-priority", type=int, default=DEFAULT_RT_PRIORITY,
                    help="SCHED_FIFO priority of the daemon (0: niceness -10 instead)")
    ap.add_argument("--watch", choices=("auto", "on", "off"), default="auto",
                    help="the daemon's standby threads (auto: the shaper's default)")
    args = ap.parse_args()
    print(f"machine: {platform.node()} {platform.platform()} cpus={os.cpu_count()} "
          f"python={platform.python_version()}")
    print(f"command: {' '.join(sys.argv)}")
    print(f"end hosts' tcp_rmem = tcp_wmem = {TCP_BUFFERS}; load average before: {os.getloadavg()}")
    results: dict[str, list[dict]] = {}
    for mode in args.modes.split(","):
        names, iprs, ends, peered = build(f"cbn{os.getpid() % 10000}{mode[0]}")
        sh = None
        try:
            if mode != "plain":
                ports = peered if mode == "peer" else ends
                sh = UserspaceShaper(shards=args.shards, rt_priority=args.rt_priority,
                                     watch={"auto": None, "on": True, "off": False}[args.watch])
                for n in NODES:
                    sh.prepare_node(n, f"/run/netns/{names[n]}", iprs[n])
                sh.set([(p, LinkShape(delay_ms=5.0, rate_mbps=10000.0)) for p in ports], iprs.__getitem__)
            rtt = subprocess.run(["ip", "netns", "exec", names["h1"], "ping", "-c", "5", "-i", "0.1", DST],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            print(f"[{mode}] ping: {rtt}")
            tests = [("tcp", 0.0)] if "tcp" in args.protos.split(",") else []
            if "udp" in args.protos.split(","):
                tests += [("udp", float(r)) for r in args.udp_mbps.split(",")]
            for proto, udp_mbps in tests:
                label = proto if proto == "tcp" else f"udp{udp_mbps:g}M"
                for run in range(args.runs):
                    t0 = time.monotonic()
                    st0 = sh.stats(reset_late_max=True) if sh else None
                    r = iperf(names, proto == "udp", args.seconds, 5400 + run, udp_mbps)
                    dt = time.monotonic() - t0
                    st1 = sh.stats() if sh else None
                    if sh and st0 and st1:
                        # CPU per shard process (each is one thread) over this run, % of one core
                        r["daemon_cpu_pct"] = [round(100 * (b - a) / dt, 1)
                                               for a, b in zip(st0["cpu_s_per_shard"], st1["cpu_s_per_shard"])]
                        r["daemon_pkts_per_s"] = (st1["queued"] - st0["queued"]) / dt
                        # lateness over this run only (the sums are cumulative; the histogram was reset)
                        n_rel = st1["released"] - st0["released"]
                        r["late_mean_us"] = (st1["late_sum_us"] - st0["late_sum_us"]) / n_rel if n_rel else 0.0
                        r["late_p50_us"], r["late_p99_us"] = st1["late_p50_us"], st1["late_p99_us"]
                        r["late_max_us"] = st1["late_max_us"]
                        r["busy_max_us"] = st1["busy_max_us"]
                        r["busy_cpu_us"] = st1["busy_cpu_us"]
                    results.setdefault(f"{mode}/{label}", []).append(r)
                    print(f"[{mode}] {label} run {run + 1}: {r}")
            if args.udp_search:
                zero = udp_zero_loss(names, sh, args.seconds)
                results.setdefault(f"{mode}/udp-zero-loss", []).append(zero)
                print(f"[{mode}] udp zero loss: {zero}")
            if sh:
                print(f"[{mode}] daemon stats: {sh.stats()}")
        finally:
            if sh:
                sh.close()
            teardown(names, iprs)
    print("\nmedians over runs:")
    for key, rs in results.items():
        def med(k: str, rs=rs):
            vals = [sum(r[k]) if isinstance(r[k], list) else r[k] for r in rs if r.get(k) is not None]
            return f"{statistics.median(vals):.1f}" if vals else "-"
        print(f"  {key:18s} Mbit/s={med('mbps'):>8s}  iperf pkts/s={med('pps'):>8s}  "
              f"daemon queued pkts/s={med('daemon_pkts_per_s'):>8s}  daemon CPU% (all shards)="
              f"{med('daemon_cpu_pct'):>6s}  late p50/p99/max us={med('late_p50_us')}/{med('late_p99_us')}/"
              f"{med('late_max_us')}  mean {med('late_mean_us')}  "
              f"longest daemon pass us={med('busy_max_us')} (on CPU {med('busy_cpu_us')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
