"""Soak: the default scenario for hours in real time, sampled from outside the run every minute.

    sudo .venv/bin/python bench/soak.py                                  # 2 h, samples every 60 s, in /tmp/soak
    sudo .venv/bin/python bench/soak.py --duration-s 180 --sample-s 20 --out /tmp/soak-try
    .venv/bin/python bench/soak.py --analyse /tmp/soak/soak.csv          # verdict and plot of a finished soak

What runs: ``satnetem run`` of the built-in default scenario (Starlink's first shell, London and New York
gateways with a host each, the compute node dc-0-0, its two ping flows), made as long as the soak, with
random pointing outages switched on (``[isl] outage_mtbf_s = 600``, ``outage_mean_duration_s = 5``: ~26
lasers down at any time, each outage a route change), the gateways' handovers it already has (~390 in 2 h),
a ``udp-probe`` New York -> London at 10/s, and one TCP flow London -> New York that this script drives
itself with iperf3 at ``--tcp-mbps`` (5 Mbit/s by default). The scenario's own ``iperf3-tcp`` kind has no
rate cap (the runner passes ``-b`` to UDP flows only), and an uncapped TCP flow through the userspace delay
daemon takes a whole core of this 2-core machine; so the flow is started here, in the run's namespaces
(entered through the namespace holder's bind mounts), and is part of the run's processes when sampled.

What is sampled every ``--sample-s`` seconds, from outside the runner (nothing is asked of it):

* ``pss_mb``: the sum of ``Pss`` in ``/proc/<pid>/smaps_rollup`` over the run's processes (and
  ``private_mb``, ``rss_mb``: their private pages, which other programs on the machine do not move as they
  move PSS, and their RSS): the runner and
  its children, every process marked with the run id or living in one of its namespaces (found as
  ``satnetem clean --run-id`` finds them: :func:`emulator.clean.find_ours`), the traffic programs included;
* ``fds``: their open descriptors (entries of ``/proc/<pid>/fd``); ``procs``: how many processes;
* ``netns``: the run's namespaces (bind mounts in the holder's ``/run/satnetem-netns``);
* ``routes``, ``nexthops``, ``nft_rules``, ``conntrack``: summed over a FIXED SAMPLE of the run's namespaces
  (:data:`SAMPLE_NODES`: both hosts, both gateways, the compute node and 12 satellites spread over the
  shell), counted by netlink dumps from a forked child that enters each namespace in turn. All 1,589
  namespaces hold ~2.5 million routes; dumping them every minute would be the heaviest thing on the machine.
  ``conntrack_host``: entries of the host's own table;
* ``slab_mb``: the kernel's ``Slab`` (``/proc/meminfo``): machine-wide, so other runs on the machine move
  it too; ``other_netns`` counts the namespaces of other satnetem runs alive at the sample to read it by;
* from the run's own files (read incrementally, only what was added since the last sample):
  ``late_p50_ms``/``late_p99_ms``/``late_max_ms`` of the steps due in the interval (``steps.csv``), and
  the delay error, measured - predicted (ms), p50/p99 over the interval's ping RTTs and udp-probe one-way
  delays (``flows/*/``), the prediction being the delay of the path the installed routes take at the probe's
  step (computed here from the run's ``timeline.npz`` with the routing layer's protocol tables, as
  ``satnetem report`` does); ``lost``: probes sent in the interval that had no answer by the next sample;
* the machine's load, to read the lateness by: ``cpu_busy_pct`` (``/proc/stat`` over the interval),
  ``steal_pct`` (the share of CPU time the hypervisor gave to other guests), ``steal_bursts`` (how many
  times a CPU lost 30 ms or more at once to it, read every 20 ms: :class:`StealWatch`), ``loadavg1``; and
  the sampler's own CPU seconds in the interval (``sampler_cpu_s``).

The verdict (printed, and in ``soak.json``), against issue 15's targets: over the last 100 minutes (the
window; a run shorter than 2 h: all but its first sixth) the PSS grows <= 5 MB/h (least-squares slope), the
counts and Slab are flat (the median of the window's last 10 samples is at most 1 % (Slab 2 %) or 2 units
above the median of its first 10), and the steps' lateness p99 over the last 10 minutes is <= 1.2 x that of
the first 10 (the first 60 s of the run, its start-up, left out of the first).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emulator.clean import find_ours, held_netns  # noqa: E402
from emulator.kernel.holder import MOUNT_DIR  # noqa: E402
from topologies.scenario import DEFAULT_SCENARIO_TOML  # noqa: E402

#: namespaces whose routes, nexthops, nft rules and conntrack entries are counted at every sample
SAMPLE_NODES = ("h-london", "h-new-york", "gs-london", "gs-new-york", "dc-0-0",
                "sat-0-0", "sat-0-11", "sat-6-3", "sat-12-7", "sat-18-14", "sat-24-21",
                "sat-30-5", "sat-36-9", "sat-42-16", "sat-50-2", "sat-60-12", "sat-71-21")
TCP_PORT = 5399  # away from the runner's iperf3 ports (5201 + i) and the matrix load's
COLUMNS = ("t_unix", "utc", "elapsed_s", "pss_mb", "private_mb", "rss_mb", "fds", "procs", "netns", "routes",
           "nexthops", "nft_rules", "conntrack", "conntrack_host", "slab_mb", "other_netns", "netns_held", "steps",
           "late_p50_ms", "late_p99_ms", "late_max_ms", "probes", "lost", "err_p50_ms", "err_p99_ms", "tcp_mbps",
           "tcp_alive", "cpu_busy_pct", "steal_pct", "steal_bursts", "loadavg1", "sampler_cpu_s")


def soak_scenario(duration_s: float) -> str:
    """The built-in default scenario, long enough for the soak, with outages and a UDP probe added."""
    text = DEFAULT_SCENARIO_TOML.replace("duration_s = 60\n", f"duration_s = {int(duration_s) + 120}\n")
    if text == DEFAULT_SCENARIO_TOML:
        raise SystemExit("soak: the default scenario no longer has 'duration_s = 60'; update soak_scenario()")
    return text + """
[[traffic]]
kind = "udp-probe"
src = "h-new-york"
dst = "h-london"
rate_pps = 10

[isl]
outage_mtbf_s = 600.0
outage_mean_duration_s = 5.0
"""


# ---------------------------------------------------------------------------------------------------------
# what the run holds, read from /proc

def _children(pids: set[int]) -> set[int]:
    """``pids`` and all their descendants."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    st = f.read()
                parent[int(d)] = int(st[st.rindex(b")") + 2:].split()[1])
            except (OSError, ValueError):
                continue
    out = set(pids)
    grew = True
    while grew:
        new = {p for p, pp in parent.items() if pp in out and p not in out}
        out |= new
        grew = bool(new)
    return out


def _mem_kb(pid: int) -> tuple[int, int, int]:
    """(Pss, Private_Clean + Private_Dirty, Rss) of ``pid``, kB. Pss shares each page among the processes
    mapping it, so it falls and rises as OTHER programs map the same libraries (numpy, Python); the private
    pages are the run's alone: a leak shows there whatever the rest of the machine does."""
    pss = private = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key == "Pss":
                    pss = int(rest.split()[0])
                elif key in ("Private_Clean", "Private_Dirty"):
                    private += int(rest.split()[0])
                elif key == "Rss":
                    rss = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return pss, private, rss


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _holder_pid(run_id: str) -> int | None:
    mark = f"satnetem:{run_id}:@netns-holder".encode()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if mark in f.read().split(b"\0"):
                        return int(d)
            except OSError:
                continue
    return None


def _meminfo_kb(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _cpu_ticks() -> tuple[int, int, int]:
    """(busy, total, steal) ticks of all CPUs (/proc/stat): steal is time the hypervisor gave another guest
    while this one had work for the CPU (busy counts it)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v[:8]) - idle, sum(v[:8]), v[7]


class StealWatch:
    """Counts steal bursts: a CPU that lost at least :data:`BURST_TICKS` ticks (USER_HZ, 10 ms each) to the
    hypervisor between two reads :data:`READ_S` apart. Such a CPU stops whatever it runs for tens of ms, the
    step's thread included (on this project's VM the steps later than ~35 ms fell mostly on them). A thread
    reading /proc/stat's per-CPU lines; :meth:`take` gives the count since the last take."""

    READ_S = 0.02
    BURST_TICKS = 3

    def __init__(self) -> None:
        self._n = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="soak-steal", daemon=True)
        self._thread.start()

    @staticmethod
    def _per_cpu() -> list[int]:
        with open("/proc/stat") as f:
            return [int(line.split()[8]) for line in f if line.startswith("cpu") and not line.startswith("cpu ")]

    def _loop(self) -> None:
        last = self._per_cpu()
        while not self._stop.wait(self.READ_S):
            now = self._per_cpu()
            bursts = sum(1 for a, b in zip(last, now) if b - a >= self.BURST_TICKS)
            last = now
            if bursts:
                with self._lock:
                    self._n += bursts

    def take(self) -> int:
        with self._lock:
            n, self._n = self._n, 0
        return n

    def stop(self) -> None:
        self._stop.set()


# ---------------------------------------------------------------------------------------------------------
# counts inside namespaces: raw netlink dumps (counting message headers; nothing is parsed)

_NLMSG_DONE, _NLMSG_ERROR = 3, 2
_NLM_F_REQUEST, _NLM_F_DUMP = 1, 0x300
_RTM_NEWROUTE, _RTM_GETROUTE, _RTM_NEWNEXTHOP, _RTM_GETNEXTHOP = 24, 26, 104, 106
_NFNL_NFT = 10 << 8
_NFT_MSG_NEWRULE, _NFT_MSG_GETRULE = 6, 7
_CLONE_NEWNET = 0x40000000
_NETLINK_NETFILTER = 12  # not in the socket module


def _dump_count(proto: int, msg_type: int, payload: bytes, reply_type: int) -> int:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto)
    try:
        s.bind((0, 0))
        s.send(struct.pack("=IHHII", 16 + len(payload), msg_type, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0) + payload)
        n = 0
        while True:
            buf = s.recv(1 << 20)
            off = 0
            while off + 16 <= len(buf):
                length, kind = struct.unpack_from("=IH", buf, off)
                if kind == _NLMSG_DONE:
                    return n
                if kind == _NLMSG_ERROR:
                    err = struct.unpack_from("=i", buf, off + 16)[0]
                    return n if err == 0 else -1
                if kind == reply_type:
                    n += 1
                off += (length + 3) & ~3
                if length == 0:
                    return n
    finally:
        s.close()


def _conntrack_count() -> int:
    try:  # /proc/sys/net is the namespace of the task that opens it
        with open("/proc/sys/net/netfilter/nf_conntrack_count") as f:
            return int(f.read())
    except OSError:
        return 0  # no conntrack in this namespace: nothing tracked


def _count_in(paths: list[str]) -> dict[str, int]:
    """Routes (every table, both families), nexthop objects, nft rules and conntrack entries summed over the
    namespaces at ``paths``: counted in a forked child, so that this process never leaves its namespace."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: setns into each in turn
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            tot = {"routes": 0, "nexthops": 0, "nft_rules": 0, "conntrack": 0, "namespaces": 0}
            for p in paths:
                try:
                    fd = os.open(p, os.O_RDONLY)
                except OSError:
                    continue
                ok = libc.setns(fd, _CLONE_NEWNET) == 0
                os.close(fd)
                if not ok:
                    continue
                tot["namespaces"] += 1
                tot["routes"] += max(0, _dump_count(socket.NETLINK_ROUTE, _RTM_GETROUTE, bytes(12), _RTM_NEWROUTE))
                tot["nexthops"] += max(0, _dump_count(socket.NETLINK_ROUTE, _RTM_GETNEXTHOP, bytes(8),
                                                      _RTM_NEWNEXTHOP))
                tot["nft_rules"] += max(0, _dump_count(_NETLINK_NETFILTER, _NFNL_NFT | _NFT_MSG_GETRULE,
                                                       bytes(4), _NFNL_NFT | _NFT_MSG_NEWRULE))
                tot["conntrack"] += _conntrack_count()
            os.write(w, json.dumps(tot).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return json.loads(text) if text else {}


# ---------------------------------------------------------------------------------------------------------
# the run's own files, read as they grow

class Tail:
    """Lines appended to a file since the last call (a partial last line waits for the next)."""

    def __init__(self, path: Path) -> None:
        self.path, self.off, self.rest = path, 0, b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.off)
                data = f.read()
        except OSError:
            return []
        self.off += len(data)
        data = self.rest + data
        cut = data.rfind(b"\n") + 1
        self.rest = data[cut:]
        return data[:cut].decode(errors="replace").splitlines()


class Prediction:
    """The delay of the path the installed routes take, per step (as ``satnetem report`` predicts it)."""

    def __init__(self, folder: Path, protocol: str) -> None:
        from routing.base import get_protocol
        from topologies.timeline import Timeline

        self.tl = Timeline.load(folder / "timeline.npz")
        self.proto = get_protocol(protocol)
        self.names = {n.name: i for i, n in enumerate(self.tl.nodes)}
        self.tables: dict[int, tuple[Any, Any]] = {}  # step -> (routing table, snapshot)
        self.delays: dict[tuple[int, int, int], float] = {}  # (step, src, dst) -> one-way ms

    def one_way_ms(self, step: int, src: str, dst: str) -> float:
        from routing.paths import table_path

        key = (step, self.names[src], self.names[dst])
        got = self.delays.get(key)
        if got is None:
            if step not in self.tables:
                snap = self.tl.snapshot(step)
                self.tables[step] = (self.proto.compute(self.tl, step, snap), snap)
            table, snap = self.tables[step]
            try:
                nodes, links = table_path(table, key[1], key[2])
            except ValueError:  # a routing loop: nothing arrives
                nodes, links = [], []
            got = self.delays[key] = self._delay(snap, links) if nodes else math.nan
        return got

    @staticmethod
    def _delay(snap: Any, links: list[int]) -> float:
        from routing.graph import path_delay_ms

        return float(path_delay_ms(snap, links))

    def forget_before(self, step: int) -> None:
        for k in [k for k in self.tables if k < step]:
            del self.tables[k]
        for key in [key for key in self.delays if key[0] < step]:
            del self.delays[key]


class RunFiles:
    """Step lateness and probe delay errors of the interval since the last call, from the results folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.run = json.loads((folder / "run.json").read_text())
        self.flows = json.loads((folder / "flows.json").read_text())
        self.pred = Prediction(folder, self.run.get("protocol", "shortest-delay"))
        self.steps = Tail(folder / "steps.csv")
        self.steps_header: list[str] | None = None
        self.tails: dict[str, Tail] = {}
        for f in self.flows:
            d = folder / "flows" / f["label"].replace(":", "_")
            if f["kind"] == "ping":
                self.tails[f["label"]] = Tail(d / "ping.txt")
            elif f["kind"] == "udp-probe":
                self.tails[f["label"] + "/sent"] = Tail(d / "sent.csv")
                self.tails[f["label"] + "/recv"] = Tail(d / "recv.csv")
        self.pending: dict[tuple[str, int], float] = {}  # udp-probe seq -> sent time, not yet received
        self.ping_seen: dict[str, int] = {}

    def step_of(self, t_unix: float) -> int:
        t = (t_unix - self.run["t0_unix"]) * self.run.get("speed", 1.0)
        return int(min(max(0, math.floor(t / self.run["step_s"])), self.pred.tl.n_steps - 1))

    def lateness(self) -> list[float]:
        late = []
        for line in self.steps.lines():
            row = line.split(",")
            if self.steps_header is None:
                self.steps_header = row
                continue
            try:
                late.append(float(row[self.steps_header.index("late_ms")]))
            except (ValueError, IndexError):
                continue
        return late

    def errors(self, now_unix: float) -> tuple[list[float], int]:
        """Measured - predicted (ms) of the probes answered since the last call; and the probes lost: sent
        more than 10 s before ``now_unix`` and never answered (ping: a gap in icmp_seq)."""
        errs: list[float] = []
        lost = 0
        for f in self.flows:
            lab = f["label"]
            if f["kind"] == "ping":
                for line in self.tails[lab].lines():
                    if not line.startswith("[") or "time=" not in line:
                        continue
                    try:
                        recv = float(line[1:line.index("]")])
                        rtt = float(line.split("time=")[1].split()[0])
                        seq = int(line.split("icmp_seq=")[1].split()[0])
                    except (ValueError, IndexError):
                        continue
                    prev = self.ping_seen.get(lab, 0)
                    lost += max(0, seq - prev - 1)
                    self.ping_seen[lab] = max(prev, seq)
                    k = self.step_of(recv - rtt / 1000.0)
                    p = self.pred.one_way_ms(k, f["src"], f["dst"]) + self.pred.one_way_ms(k, f["dst"], f["src"])
                    errs.append(rtt - p)
            elif f["kind"] == "udp-probe":
                for line in self.tails[lab + "/sent"].lines():
                    parts = line.split(",")
                    if len(parts) == 3 and parts[1].isdigit():
                        self.pending[(lab, int(parts[1]))] = int(parts[2]) / 1e9
                for line in self.tails[lab + "/recv"].lines():
                    parts = line.split(",")
                    if len(parts) != 4 or not parts[1].isdigit():
                        continue
                    sent = self.pending.pop((lab, int(parts[1])), None)
                    if sent is None:
                        continue  # a duplicate
                    one_way = (int(parts[3]) / 1e9 - sent) * 1000.0
                    errs.append(one_way - self.pred.one_way_ms(self.step_of(sent), f["src"], f["dst"]))
        for key, sent in list(self.pending.items()):
            if sent < now_unix - 10.0:
                del self.pending[key]
                lost += 1
        self.pred.forget_before(self.step_of(now_unix) - 30)
        return errs, lost


# ---------------------------------------------------------------------------------------------------------
# the soak

def _pct(v: list[float], q: float) -> float:
    return float(np.percentile(v, q)) if v else math.nan


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise SystemExit(f"soak: the run ended (status {proc.returncode}) before {path.name} appeared; "
                             f"see its log")
        if time.monotonic() > end:
            raise SystemExit(f"soak: no {path} after {timeout_s:g} s")
        time.sleep(0.5)


def _tcp_flow(holder: int, folder: Path, duration_s: float, mbps: float, out: Path) -> list[subprocess.Popen]:
    """An iperf3 TCP flow h-london -> h-new-york at ``mbps``, its ends started in the nodes' namespaces."""
    addrs = json.loads((folder / "addresses.json").read_text())
    dst = next(a for a, owners in addrs.items() if "h-new-york" in owners.values())
    ns = f"/proc/{holder}/root{MOUNT_DIR}"
    srv = subprocess.Popen(["nsenter", f"--net={ns}/h-new-york", "iperf3", "-s", "-1", "-B", dst,
                            "-p", str(TCP_PORT)],
                           stdout=open(out / "tcp-server.log", "w"), stderr=subprocess.STDOUT)
    time.sleep(0.5)
    cli = subprocess.Popen(["nsenter", f"--net={ns}/h-london", "iperf3", "-c", dst, "-p", str(TCP_PORT),
                            "-t", str(int(duration_s)), "-b", f"{mbps:g}M", "-i", "10", "--forceflush"],
                           stdout=open(out / "tcp-client.log", "w"), stderr=subprocess.STDOUT)
    return [cli, srv]


def _tcp_mbps(tail: Tail, last: float) -> float:
    for line in tail.lines():
        if "bits/sec" in line and "sender" not in line and "receiver" not in line:
            parts = line.split()
            try:
                i = next(j for j, p in enumerate(parts) if p.endswith("bits/sec"))
                scale = {"Kbits/sec": 1e-3, "Mbits/sec": 1.0, "Gbits/sec": 1e3, "bits/sec": 1e-6}[parts[i]]
                last = float(parts[i - 1]) * scale
            except (StopIteration, KeyError, ValueError):
                continue
    return last


def soak(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = out / "results"
    if folder.exists():
        raise SystemExit(f"soak: {folder} exists; give another --out")
    scen = out / "soak.toml"
    scen.write_text(soak_scenario(args.duration_s))
    satnetem = str(Path(sys.executable).parent / "satnetem")
    cmd = [satnetem, "run", str(scen), "--duration", f"{args.duration_s:g}", "-o", str(folder),
           "--run-id", args.run_id]
    log = open(out / "run.log", "w")
    runner = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    print(f"soak: {' '.join(cmd)} (pid {runner.pid}); log {out / 'run.log'}", flush=True)
    traffic: list[subprocess.Popen] = []

    def stop(signum: int, _frame: Any) -> None:
        runner.send_signal(signal.SIGINT)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        _wait_for(folder / "flows.json", runner, 900)
        holder = _holder_pid(args.run_id)
        if holder is None:
            raise SystemExit("soak: the run's namespace holder is not running")
        traffic = _tcp_flow(holder, folder, args.duration_s, args.tcp_mbps, out)
        files = RunFiles(folder)
        tcp_tail = Tail(out / "tcp-client.log")
        ns_dir = f"/proc/{holder}/root{MOUNT_DIR}"
        sample_paths = [f"{ns_dir}/{n}" for n in SAMPLE_NODES]
        t0 = files.run["t0_unix"]
        busy0, tot0, steal0 = _cpu_ticks()
        steal = StealWatch()
        tcp_last = math.nan
        with open(out / "soak.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(COLUMNS)
            fh.flush()
            k = 0
            while True:
                # a sampler starved past a whole interval takes one sample now, not one per slot missed
                k = max(k + 1, int((time.time() - t0) // args.sample_s))
                due = t0 + k * args.sample_s
                if due > t0 + args.duration_s - 2.0:  # the run's last seconds are its teardown: not sampled
                    break
                while time.time() < due and runner.poll() is None:
                    time.sleep(min(1.0, max(0.0, due - time.time())))
                if runner.poll() is not None:
                    break
                ru0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime + \
                    resource.getrusage(resource.RUSAGE_SELF).ru_stime + \
                    resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime + \
                    resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime
                now = time.time()
                ours, _ = find_ours(args.run_id)
                every, all_inodes = find_ours(None)
                pids = _children({runner.pid} | ours | {p.pid for p in traffic if p.poll() is None})
                pids.discard(os.getpid())
                ours_inodes = held_netns(holder)
                counts = _count_in(sample_paths)
                mem = [sum(m) for m in zip(*(_mem_kb(p) for p in pids))] if pids else [0, 0, 0]
                late = files.lateness()
                errs, lost = files.errors(now)
                tcp_last = _tcp_mbps(tcp_tail, tcp_last)
                busy1, tot1, steal1 = _cpu_ticks()
                busy_pct = 100.0 * (busy1 - busy0) / max(1, tot1 - tot0)
                steal_pct = 100.0 * (steal1 - steal0) / max(1, tot1 - tot0)
                busy0, tot0, steal0 = busy1, tot1, steal1
                row = {
                    "t_unix": f"{now:.1f}", "utc": time.strftime("%H:%M:%S", time.gmtime(now)),
                    "elapsed_s": f"{now - t0:.0f}",
                    "pss_mb": f"{mem[0] / 1024:.2f}", "private_mb": f"{mem[1] / 1024:.2f}",
                    "rss_mb": f"{mem[2] / 1024:.2f}",
                    "fds": sum(_fds(p) for p in pids), "procs": len(pids),
                    "netns": len(os.listdir(ns_dir)) if os.path.isdir(ns_dir) else 0,
                    "routes": counts.get("routes", ""), "nexthops": counts.get("nexthops", ""),
                    "nft_rules": counts.get("nft_rules", ""), "conntrack": counts.get("conntrack", ""),
                    "conntrack_host": _conntrack_count(),
                    "slab_mb": f"{_meminfo_kb('Slab') / 1024:.1f}",
                    "other_netns": len(all_inodes - ours_inodes), "netns_held": len(ours_inodes),
                    "steps": len(late), "late_p50_ms": f"{_pct(late, 50):.2f}",
                    "late_p99_ms": f"{_pct(late, 99):.2f}", "late_max_ms": f"{max(late, default=math.nan):.2f}",
                    "probes": len(errs), "lost": lost, "err_p50_ms": f"{_pct(errs, 50):.3f}",
                    "err_p99_ms": f"{_pct(errs, 99):.3f}", "tcp_mbps": f"{tcp_last:.2f}",
                    "tcp_alive": int(bool(traffic) and traffic[0].poll() is None),
                    "cpu_busy_pct": f"{busy_pct:.1f}", "steal_pct": f"{steal_pct:.2f}", "steal_bursts": steal.take(),
                    "loadavg1": open("/proc/loadavg").read().split()[0],
                }
                ru1 = resource.getrusage(resource.RUSAGE_SELF).ru_utime + \
                    resource.getrusage(resource.RUSAGE_SELF).ru_stime + \
                    resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime + \
                    resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime
                row["sampler_cpu_s"] = f"{ru1 - ru0:.3f}"
                w.writerow([row[c] for c in COLUMNS])
                fh.flush()
                print(f"soak {row['utc']} +{row['elapsed_s']} s: PSS {row['pss_mb']} MB, fds {row['fds']}, "
                      f"netns {row['netns']}, routes {row['routes']}, nft {row['nft_rules']}, conntrack "
                      f"{row['conntrack']}, Slab {row['slab_mb']} MB, late p99 {row['late_p99_ms']} ms, "
                      f"err p50/p99 {row['err_p50_ms']}/{row['err_p99_ms']} ms, lost {lost}, TCP "
                      f"{row['tcp_mbps']} Mbit/s, CPU {row['cpu_busy_pct']} % (steal {row['steal_pct']} %, "
                      f"{row['steal_bursts']} bursts), sampler {row['sampler_cpu_s']} s",
                      flush=True)
        rc = runner.wait()
        steal.stop()
        print(f"soak: the run ended with status {rc}", flush=True)
    except KeyboardInterrupt:
        print("soak: interrupted; the run was sent SIGINT", flush=True)
        runner.wait()
    finally:
        for p in traffic:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=10)
    return out / "soak.csv"


# ---------------------------------------------------------------------------------------------------------
# verdict and plot

def _col(rows: list[dict[str, str]], key: str) -> np.ndarray:
    return np.array([float(r[key]) if r.get(key, "") not in ("", "nan") else np.nan for r in rows])


def analyse(csv_path: Path, steps_csv: Path | None, plot: Path | None) -> dict[str, Any]:
    """The verdict against issue 15's targets, from ``soak.csv`` (and the run's ``steps.csv`` for lateness)."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) < 4:
        raise SystemExit(f"soak: {csv_path} has {len(rows)} samples; too few to judge")
    el = _col(rows, "elapsed_s")
    end = float(el[-1])
    start = end - 6000.0 if end >= 7200.0 - 120 else end / 6.0  # the last 100 min; a short soak: all but 1/6
    win = el >= start
    res: dict[str, Any] = {"samples": len(rows), "elapsed_s": end, "window_s": [round(start), round(end)]}
    h = el[win] / 3600.0
    pss = _col(rows, "pss_mb")[win]
    slope = float(np.polyfit(h, pss, 1)[0]) if len(h) >= 2 else math.nan
    res["pss_mb"] = {"first": float(pss[0]), "last": float(pss[-1]), "slope_mb_per_h": round(slope, 3),
                     "ok": bool(slope <= 5.0)}
    priv = _col(rows, "private_mb")[win]
    if np.isfinite(priv).sum() >= 2:  # the run's own pages (not judged: the target is on PSS; read it by this)
        ok = np.isfinite(priv)
        res["private_mb"] = {"first": float(priv[ok][0]), "last": float(priv[ok][-1]),
                             "slope_mb_per_h": round(float(np.polyfit(h[ok], priv[ok], 1)[0]), 3)}
    n = max(1, min(10, int(win.sum()) // 3))
    for key, share in (("fds", 0.01), ("procs", 0.01), ("netns", 0.01), ("netns_held", 0.01), ("routes", 0.01),
                       ("nexthops", 0.01),
                       ("nft_rules", 0.01), ("conntrack", 0.01), ("conntrack_host", 0.01), ("slab_mb", 0.02)):
        v = _col(rows, key)[win]
        first, last = float(np.nanmedian(v[:n])), float(np.nanmedian(v[-n:]))
        res[key] = {"first": first, "last": last, "min": float(np.nanmin(v)), "max": float(np.nanmax(v)),
                    "growth": round(last - first, 2), "ok": bool(last - first <= max(share * first, 2.0))}
    # Slab is the whole machine's: judged again on the samples at which no other satnetem run had namespaces
    quiet = win & (_col(rows, "other_netns") == 0)
    if quiet.sum() >= 4:
        v = _col(rows, "slab_mb")[quiet]
        q = max(1, min(10, len(v) // 3))
        first, last = float(np.median(v[:q])), float(np.median(v[-q:]))
        res["slab_mb_no_other_runs"] = {"samples": int(quiet.sum()), "first": first, "last": last,
                                        "growth": round(last - first, 2), "ok": bool(last - first <= 0.02 * first)}
    # lateness: every step of the first and last 10 minutes (the first 60 s, the start-up, left out)
    span = min(600.0, end / 3.0)
    if steps_csv is not None and steps_csv.is_file():
        with open(steps_csv, newline="") as f:
            st = [(float(r["due_s"]), float(r["late_ms"])) for r in csv.DictReader(f)]
        due = np.array([s[0] for s in st])
        late = np.array([s[1] for s in st])
        first_l = late[(due >= 60.0) & (due < 60.0 + span)]
        last_l = late[due >= due.max() - span]
        p_first, p_last = float(np.percentile(first_l, 99)), float(np.percentile(last_l, 99))
        res["late_p99_ms"] = {"first": round(p_first, 2), "last": round(p_last, 2),
                              "first_incl_startup": round(float(np.percentile(late[due < span], 99)), 2),
                              "ratio": round(p_last / p_first, 3), "ok": bool(p_last <= 1.2 * p_first),
                              "median_first": round(float(np.median(first_l)), 2),
                              "median_last": round(float(np.median(last_l)), 2)}
        if "steal_pct" in rows[0]:  # not judged: what the hypervisor took from the VM in the two windows
            stp, stb = _col(rows, "steal_pct"), _col(rows, "steal_bursts")
            w1 = (el > 60.0) & (el <= 60.0 + span + 1)
            w2 = el > end - span
            res["late_p99_ms"]["steal_pct_first_last"] = [round(float(np.nanmean(stp[w1])), 2),
                                                          round(float(np.nanmean(stp[w2])), 2)]
            res["late_p99_ms"]["steal_bursts_first_last"] = [int(np.nansum(stb[w1])), int(np.nansum(stb[w2]))]
    busy = _col(rows, "cpu_busy_pct")
    res["cpu_busy_pct"] = {"median": round(float(np.nanmedian(busy)), 1), "max": round(float(np.nanmax(busy)), 1),
                           "busy_over_90_at": [r["utc"] for r, b in zip(rows, busy) if b > 90]}
    res["err_ms"] = {"p50_median": round(float(np.nanmedian(_col(rows, "err_p50_ms"))), 3),
                     "p99_max": round(float(np.nanmax(_col(rows, "err_p99_ms"))), 3),
                     "lost": int(np.nansum(_col(rows, "lost"))), "probes": int(np.nansum(_col(rows, "probes")))}
    res["sampler_cpu_s"] = {"median": round(float(np.nanmedian(_col(rows, "sampler_cpu_s"))), 3),
                            "max": round(float(np.nanmax(_col(rows, "sampler_cpu_s"))), 3)}
    res["ok"] = all(v.get("ok", True) for v in res.values() if isinstance(v, dict))
    if plot is not None:
        _plot(rows, start, plot)
    return res


def _plot(rows: list[dict[str, str]], start: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = _col(rows, "elapsed_s") / 60.0
    fig, ax = plt.subplots(3, 2, figsize=(10, 7.5), sharex=True)
    panels = [
        (ax[0, 0], [("pss_mb", "PSS of the run's processes, MB"), ("private_mb", "their private pages, MB")],
         None),
        (ax[0, 1], [("slab_mb", "kernel Slab, MB"), ("other_netns", "other runs' namespaces")], None),
        (ax[1, 0], [("fds", "open fds"), ("procs", "processes x 10"), ("netns", "namespaces")], None),
        (ax[1, 1], [("routes", "routes / 100"), ("nexthops", "nexthops"), ("nft_rules", "nft rules"),
                    ("conntrack", "conntrack")], "sampled namespaces"),
        (ax[2, 0], [("late_p50_ms", "step late p50"), ("late_p99_ms", "step late p99"),
                    ("steal_pct", "CPU stolen by the hypervisor, % x 10")], "ms"),
        (ax[2, 1], [("err_p50_ms", "measured - predicted p50"), ("err_p99_ms", "p99")], "ms"),
    ]
    scale = {"procs": 10.0, "routes": 0.01, "steal_pct": 10.0}
    busy = _col(rows, "cpu_busy_pct")
    for a, series, ylabel in panels:
        for key, label in series:
            a.plot(m, _col(rows, key) * scale.get(key, 1.0), label=label, lw=1)
        for i in range(len(m)):
            if busy[i] > 90:  # the machine was saturated in this interval (other work): read lateness by it
                a.axvspan(m[i] - (m[1] - m[0] if len(m) > 1 else 1), m[i], color="orange", alpha=0.15, lw=0)
        a.axvline(start / 60.0, color="grey", ls=":", lw=1)
        a.legend(fontsize=7, loc="upper left")
        if ylabel:
            a.set_ylabel(ylabel, fontsize=8)
        a.tick_params(labelsize=7)
    for a in ax[2]:
        a.set_xlabel("minutes into the run (dotted: start of the judged window; orange: machine > 90 % busy)",
                      fontsize=7)
    fig.suptitle("satnetem soak: default scenario, 1 Hz, ping + UDP + TCP, random outages and handovers", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration-s", type=float, default=7200.0, help="run length, s (default 2 h)")
    ap.add_argument("--sample-s", type=float, default=60.0, help="sampling interval, s (default 60)")
    ap.add_argument("--out", default="/tmp/soak", help="output folder (default /tmp/soak)")
    ap.add_argument("--run-id", default=None, help="run id, starting 'soak' (default soak-<time>)")
    ap.add_argument("--tcp-mbps", type=float, default=5.0, help="the TCP flow's rate, Mbit/s (default 5)")
    ap.add_argument("--analyse", metavar="CSV", help="only judge and plot a finished soak's soak.csv")
    args = ap.parse_args()
    if args.analyse:
        csv_path = Path(args.analyse)
    else:
        if not (math.isfinite(args.duration_s) and args.duration_s >= 60 and 5 <= args.sample_s <= 600):
            raise SystemExit("soak: --duration-s must be >= 60 and --sample-s in [5, 600]")
        args.run_id = args.run_id or time.strftime("soak-%H%M%S")
        if not args.run_id.startswith("soak"):
            raise SystemExit("soak: --run-id must start with 'soak'")
        if os.geteuid() != 0:
            raise SystemExit("soak: needs root (it builds the network)")
        csv_path = soak(args)
    res = analyse(csv_path, csv_path.parent / "results" / "steps.csv", csv_path.parent / "soak.png")
    (csv_path.parent / "soak.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    print(f"soak verdict: {'MET' if res['ok'] else 'NOT MET'} ("
          + "; ".join(f"{k} {'ok' if v['ok'] else 'MISSED'}" for k, v in res.items()
                      if isinstance(v, dict) and "ok" in v) + ")")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
