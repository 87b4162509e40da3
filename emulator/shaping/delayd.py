"""Driver of the compiled delay daemon (``delayd.c``): starts its shard processes, gives each a share of
the namespaces, and speaks their line protocol. No packet passes through Python.

Each shard is one process of ``satnetem-delayd`` (built by ``install.sh`` into ``build/``) with one control
socket (a socketpair end handed over as ``--ctl-fd``; no path, no abstract name). A namespace belongs to
one shard for as long as it is attached: the shard with the fewest namespaces that is still under its
open-file limit, so that ``shards`` processes share the load and a constellation of 10,744 namespaces
under a per-process limit of 4,096 gets ``ceil(10,744 / (4,096 - margin))`` processes or more (a shard
costs one socket per namespace). Requests are one line each (see the C source); nf_tables batches and the
queue configuration are built here with :mod:`emulator.shaping.nfnl` and sent hex encoded.

The shard processes run with argv[0] ``emulator.shaping.delayd`` (what ``emulator.clean`` looks for), die
with the thread that started them (PR_SET_PDEATHSIG) and remove their tables on the way out.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import resource
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emulator.kernel import modules
from emulator.kernel.cpulatency import CpuLatencyHold
from emulator.shaping import nfnl
from topologies.errors import ApplyError

log = logging.getLogger(__name__)

DEFAULT_QUEUE_NUM = 4711
DEFAULT_TABLE = "satnetem_delay"
#: argv[0] of every shard process: emulator.clean and the tests recognise the daemon by it.
PROCESS_NAME = "emulator.shaping.delayd"
BINARY_ENV = "SATNETEM_DELAYD"  # path of the daemon binary, overriding the build directory's
_PROJECT_ROOT = Path(__file__).resolve().parents[2]
BUILT_BINARY = _PROJECT_ROOT / "build" / "satnetem-delayd"
#: Bytes of each queued packet copied to the daemon: IPv4 header (20-60 B) and the L4 fields of the loss
#: decision (ports, TCP sequence numbers, the start of a UDP payload).
COPY_BYTES = 64
#: Files a shard keeps open besides its namespace sockets (control, epoll, timer, signal, own namespace,
#: stdio) with room to spare.
FD_MARGIN = 32
#: Without a shard count asked for, one shard per this many namespaces, up to one per CPU core. A packet
#: handed from a shard to one on another CPU wakes that CPU: on the 2-core development VM, 4 hops of 1 ms
#: (5 namespaces) cost 17-56 us beyond their delay and unshaped forwarding with one shard against 18-79 us
#: with two (4 runs each, alternated, quiet), and 35-122 against 92-174 in a slower hour; iperf3 TCP over the
#: same hops carried 4.2 Gbit/s with one shard, 3.7 with two. A small lab does not need a second core;
#: a constellation does.
NAMESPACES_PER_SHARD = 32
#: Namespaces attached from which every shard runs standby threads (delayd.c, op "watch"), one per CPU: on
#: the development VM a SCHED_FIFO thread's 1 ms timer woke late on one CPU at a time with thousands of idle
#: namespaces in the kernel: up to 6.5 ms (28 ms in another run) with 10,000, 3.5-9 ms with 4,000, at most
#: 1.2 ms with 1,500 (bench/timer_stalls.py, README "Standby threads"). The same happens with no namespaces
#: at all while the CPUs are busy: beside two ``stress-ng --cpu 1`` the VM lost one CPU at a time for about
#: 4.6 ms every few seconds. So from the first namespace on: a held packet read late at an egress hold (whose
#: delay counts from the read) lengthened ping's RTT by more than 2 ms 30 times in 14 x 2,800 echoes without
#: standby threads, twice in 8 x 2,800 with them; TCP through 4 hops of 5 ms carried 4.2-4.4 Gbit/s either way.
WATCH_MIN_NAMESPACES = 1
#: A standby thread's longest sleep, and how long past its due time a packet waits for the main loop.
WATCH_PERIOD_NS = 1_000_000
WATCH_GRACE_NS = 300_000
#: Bytes of the lateness table the shards share (delayd.c CARRY_TABLE_BYTES: 2^16 words of 8 bytes).
CARRY_TABLE_BYTES = (1 << 16) * 8
#: SCHED_FIFO priority of the shards by default. netem, which the daemon stands in for, runs in softirq,
#: ahead of every process; at niceness -10 on a loaded machine (load average 6.6 on 2 cores) the daemon's
#: release lateness was p50 0.56 ms, p99 > 10 ms and TCP through 4 hops of 5 ms 1.2 Gbit/s; at SCHED_FIFO
#: 10: p50 -7.5 us, p99 148 us, 2.0 Gbit/s. The kernel's real-time throttling (95 % of each CPU) bounds
#: what a flood can take from the rest of the machine.
DEFAULT_RT_PRIORITY = 10
# lateness histogram of the daemon: 5 us bins from -1 ms to +10 ms; the last bin is everything later
LATE_BIN_NS = 5_000
LATE_LOW_NS = 1_000_000
LATE_BINS = 2_200


def binary_path() -> Path | None:
    """The daemon binary: ``$SATNETEM_DELAYD`` if set, else ``build/satnetem-delayd``; None if missing."""
    env = os.environ.get(BINARY_ENV)
    p = Path(env) if env else BUILT_BINARY
    return p if p.is_file() and os.access(p, os.X_OK) else None


@functools.lru_cache(maxsize=1 << 16)
def link_id(node: str, ifname: str) -> int:
    """64-bit identity of the link direction sent by ``node``'s ``ifname``: an input of the loss decision,
    the same in every run of a scenario (unlike ifindexes and namespace paths)."""
    return int.from_bytes(hashlib.blake2b(f"{node}/{ifname}".encode(), digest_size=8).digest(), "little")


def open_file_limit() -> int:
    """The open-file limit a shard can reach (it raises its soft limit to the hard one)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return hard if hard != resource.RLIM_INFINITY else 1 << 20


def shards_needed(namespaces: int, limit: int) -> int:
    """Minimum shard processes for ``namespaces`` under a per-process open-file limit ``limit``."""
    per = limit - FD_MARGIN
    if per < 1:
        raise ApplyError(f"open-file limit {limit} leaves no room for namespace sockets (margin {FD_MARGIN})",
                         operation="delay daemon")
    return -(-namespaces // per)


@dataclass
class Stats:
    """Counters summed over the shards and their merged lateness histogram."""

    counters: dict[str, int] = field(default_factory=dict)
    late_hist: list[int] = field(default_factory=lambda: [0] * (LATE_BINS + 1))

    def late_quantile_us(self, q: float) -> float | None:
        """The ``q`` quantile of release lateness (us, bin centre; negative: released early), or None when
        nothing was released or the quantile lies beyond the histogram's last bin."""
        total = sum(self.late_hist)
        if not total:
            return None
        want, seen = q * total, 0
        for i, c in enumerate(self.late_hist):
            seen += c
            if seen >= want and c:
                if i == LATE_BINS:
                    return None
                return (i * LATE_BIN_NS - LATE_LOW_NS + LATE_BIN_NS / 2) / 1e3
        return None


#: keys of :meth:`DelayDaemon.stats` that are the largest over shards (and hosts), not sums
_LARGEST = ("late_max_us", "busy_max_us", "busy_cpu_us", "lead_us", "rt_priority", "epoch_mark", "carry")
#: keys worked out from others when daemons' statistics are merged
_DERIVED = ("late_mean_us", "late_p50_us", "late_p99_us", "read_lag_mean_us", "memory_locked", "backend",
            "cpu_s_per_shard", "ops", "late_hist")


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several daemons' :meth:`DelayDaemon.stats` (the hosts of a clustered run, each its own daemon) as one
    daemon's: counters summed, maxima the largest, the means weighted by what they are means of, the lateness
    quantiles from the summed histograms, every shard's CPU seconds; ``{}`` for none (no daemon ran)."""
    parts = [p for p in parts if p]
    if not parts:
        return {}
    out: dict[str, Any] = {}
    for k in parts[0]:
        if k in _DERIVED:
            continue
        vals = [p[k] for p in parts if p.get(k) is not None]
        out[k] = max(vals, default=None) if k in _LARGEST else sum(vals)
    st = Stats()
    for p in parts:
        for b, c in enumerate(p.get("late_hist") or []):
            st.late_hist[b] += int(c)
    released, stamped = out.get("released", 0), out.get("stamped", 0)
    out["late_mean_us"] = out.get("late_sum_us", 0.0) / released if released else 0.0
    out["late_p50_us"], out["late_p99_us"] = st.late_quantile_us(0.5), st.late_quantile_us(0.99)
    out["read_lag_mean_us"] = (sum(p.get("read_lag_mean_us", 0.0) * p.get("stamped", 0) for p in parts) / stamped
                               if stamped else 0.0)
    out["memory_locked"] = all(p.get("memory_locked") for p in parts)
    out["backend"] = parts[0].get("backend")
    out["cpu_s_per_shard"] = [x for p in parts for x in p.get("cpu_s_per_shard") or []]
    ops: dict[str, dict[str, float]] = {}
    for p in parts:
        for name, o in (p.get("ops") or {}).items():
            m = ops.setdefault(name, {"n": 0, "ms": 0.0, "max_ms": 0.0})
            m["n"] += o["n"]
            m["ms"] += o["ms"]
            m["max_ms"] = max(m["max_ms"], o["max_ms"])
    out["ops"] = ops
    out["late_hist"] = list(st.late_hist)
    return out


@dataclass(eq=False)
class _Shard:
    index: int
    proc: subprocess.Popen[bytes]
    sock: socket.socket
    ids: dict[str, int] = field(default_factory=dict)  # ns path -> id in this shard
    free_ids: list[int] = field(default_factory=list)
    rbuf: bytes = b""
    watching: bool = False  # its standby threads started

    def new_id(self) -> int:
        return self.free_ids.pop() if self.free_ids else len(self.ids)


@dataclass
class _Ns:
    shard: _Shard
    nsid: int
    ingress_all: bool
    keys: set[int] = field(default_factory=set)  # nfnl.hold_key of the held interfaces
    ruled: frozenset[int] = frozenset()  # keys the kernel's rules queue now


class DelayDaemon:
    """The compiled delay daemon's shards, driven over their control sockets.

    Parameters
    ----------
    seed : int
        Seed of the loss decisions (0 <= seed < 2**64).
    shards : int or None
        Shard processes to start (None: one per :data:`NAMESPACES_PER_SHARD` namespaces attached, up to one
        per CPU core); more are started when the open-file limit requires it.
    rt_priority : int
        1-99: SCHED_FIFO at that priority (falls back to niceness -10 where refused); 0: niceness -10.
    fd_limit : int or None
        Open-file limit of each shard (None: the hard limit this process has); the driver puts at most
        ``fd_limit - FD_MARGIN`` namespaces in one shard.
    pool : int
        Packets a shard can hold at once (beyond it, a packet is dropped and counted in ``overflow``).
    maxlen : int
        Kernel queue length per namespace, packets.
    carry : bool
        Carry a late release's lateness to the packet's next hold, which holds it that much less (as far as its
        delay allows), through one table all shards share (delayd.c, "Lateness carried"). False: every hold
        counts its delay from the packet's arrival, late or not.
    watch : bool or None
        Standby threads in every shard, one per CPU, each releasing what the main loop has not released
        ``WATCH_GRACE_NS`` after its due time (a CPU that stops running anything leaves the other to do it).
        None: from :data:`WATCH_MIN_NAMESPACES` namespaces attached on.
    keep_cpus_awake : bool
        Hold the kernel's CPU latency request at 0 us while the shards run (emulator.kernel.cpulatency): idle
        CPUs poll, so the shards' timers wake them on time.
    """

    def __init__(self, seed: int = 0, queue_num: int = DEFAULT_QUEUE_NUM, table: str = DEFAULT_TABLE,
                 shards: int | None = None, rt_priority: int = DEFAULT_RT_PRIORITY, pool: int = 1 << 20,
                 maxlen: int = 65536, reply_timeout_s: float = 30.0, binary: Path | None = None,
                 fd_limit: int | None = None, carry: bool = True, keep_cpus_awake: bool = True,
                 watch: bool | None = None) -> None:
        if not 0 <= seed < 2**64:
            raise ApplyError(f"delay daemon seed {seed} not in [0, 2**64)", operation="delay daemon")
        if shards is not None and shards < 1:
            raise ApplyError(f"delay daemon shards must be >= 1, got {shards}", operation="delay daemon")
        if not 0 <= rt_priority <= 99:
            raise ApplyError(f"delay daemon rt_priority must be in [0, 99], got {rt_priority}",
                             operation="delay daemon")
        self.seed, self.queue_num, self.table = seed, queue_num, table
        self.shards_asked = shards
        self.want_shards = shards or 1  # grows with the namespaces attached when none was asked for
        self.rt_priority, self.pool, self.maxlen = rt_priority, pool, maxlen
        self.reply_timeout_s = reply_timeout_s
        self.binary = binary or binary_path()
        self.fd_limit = fd_limit
        self.carry = carry
        self.watch = watch
        self._cpu_hold = CpuLatencyHold(0) if keep_cpus_awake else None  # held from the first shard to close()
        self._carry_fd: int | None = None  # the shards' shared lateness table (a memfd), made at the first spawn
        self.per_shard = (fd_limit or open_file_limit()) - FD_MARGIN
        if self.per_shard < 1:
            raise ApplyError(f"open-file limit {fd_limit or open_file_limit()} leaves no room for namespace "
                             f"sockets (margin {FD_MARGIN})", operation="delay daemon")
        self.shards: list[_Shard] = []
        self.ns: dict[str, _Ns] = {}
        self._seq = 1
        self._lock = threading.Lock()
        self._closed = False
        self._modules_checked = False

    # ----------------------------------------------------------------- processes

    @property
    def pids(self) -> list[int]:
        return [s.proc.pid for s in self.shards if s.proc.poll() is None]

    def _spawn(self) -> _Shard:
        if self.binary is None:
            raise ApplyError(f"the compiled delay daemon is not built ({BUILT_BINARY} missing): run ./install.sh",
                             operation="start delay daemon")
        source = Path(__file__).with_name("delayd.c")
        if not self.shards and source.is_file() and source.stat().st_mtime > self.binary.stat().st_mtime:
            log.warning("%s is older than %s: run ./install.sh to rebuild it", self.binary, source)
        if self._cpu_hold is not None and not self.shards:
            self._cpu_hold.hold()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        exit_batch, _ = nfnl.nft_table_batch(self.table, 1, install=False)
        argv = [PROCESS_NAME, "--ctl-fd", str(theirs.fileno()), "--queue-num", str(self.queue_num),
                "--seed", str(self.seed), "--pool", str(self.pool), "--exit-batch", exit_batch.hex()]
        if self.rt_priority:
            argv += ["--rt-priority", str(self.rt_priority)]
        if self.fd_limit:
            argv += ["--fd-limit", str(self.fd_limit)]
        pass_fds = [theirs.fileno()]
        if not self.carry:
            argv += ["--no-carry", "1"]
        else:
            if self._carry_fd is None:
                self._carry_fd = os.memfd_create("satnetem-carry", os.MFD_CLOEXEC)
                os.ftruncate(self._carry_fd, CARRY_TABLE_BYTES)
            argv += ["--carry-fd", str(self._carry_fd)]
            pass_fds.append(self._carry_fd)
        log.info("starting delay daemon shard %d: %s %s", len(self.shards), self.binary, argv[1:])
        try:
            proc = subprocess.Popen(argv, executable=str(self.binary), pass_fds=pass_fds,
                                    stdin=subprocess.DEVNULL, close_fds=True)
        finally:
            theirs.close()
        shard = _Shard(len(self.shards), proc, ours)
        self.shards.append(shard)
        return shard

    def _next_seq(self, n: int = 32) -> int:
        s = self._seq
        self._seq = (self._seq + n) % (1 << 30) or 1
        return s

    # ----------------------------------------------------------------- protocol

    def _exchange(self, work: dict[_Shard, list[str]], op: str) -> dict[_Shard, list[str]]:
        """Send each shard its request lines and collect one reply line per request, all shards at once
        (they work in parallel; writing and reading are interleaved so neither side's buffer fills). Fails
        when no shard has answered anything for ``reply_timeout_s``, however long the whole takes."""
        out = {s: "".join(line + "\n" for line in lines).encode() for s, lines in work.items() if lines}
        want = {s: len(work[s]) for s in out}
        got: dict[_Shard, list[str]] = {s: [] for s in out}
        poller = select.poll()
        by_fd = {}
        for s in out:
            s.sock.setblocking(False)
            by_fd[s.sock.fileno()] = s
            poller.register(s.sock, select.POLLIN | select.POLLOUT)
        pending = dict(want)

        deadline = time.monotonic() + self.reply_timeout_s
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ApplyError(f"delay daemon answered nothing for {self.reply_timeout_s} s", operation=op)
            for fd, ev in poller.poll(left * 1000):
                s = by_fd[fd]
                if ev & select.POLLOUT and out[s]:
                    try:
                        n = s.sock.send(out[s])
                    except BlockingIOError:
                        n = 0
                    except OSError as e:
                        raise ApplyError(f"delay daemon shard {s.index} gone ({e}; exit {s.proc.poll()})",
                                         operation=op) from None
                    out[s] = out[s][n:]
                    if not out[s]:
                        poller.modify(fd, select.POLLIN)
                if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    try:
                        chunk = s.sock.recv(1 << 20)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        raise ApplyError(f"delay daemon shard {s.index} died (exit {s.proc.wait()})",
                                         operation=op)
                    s.rbuf += chunk
                    *lines, s.rbuf = s.rbuf.split(b"\n")
                    got[s] += [line.decode() for line in lines]
                    if lines:
                        # the deadline runs from the last answer, not from the call: attaching 1,588 namespaces
                        # took longer than 30 s in all in the TCG VM, with the shards answering throughout
                        deadline = time.monotonic() + self.reply_timeout_s
                    if len(got[s]) >= want[s]:
                        pending.pop(s, None)
                        poller.unregister(fd)
        return got

    def _call(self, op: str, work: dict[_Shard, list[str]]) -> dict[_Shard, list[str]]:
        if self._closed:
            raise ApplyError("delay daemon is closed", operation=op)
        return self._exchange(work, op)

    @staticmethod
    def _check(replies: Iterable[str], op: str) -> None:
        for r in replies:
            if not r.startswith("ok"):
                raise ApplyError(f"delay daemon: {r[4:] if r.startswith('err ') else r}", operation=op)

    # ----------------------------------------------------------------- operations

    def _pick_shard(self, load: dict[_Shard, int]) -> _Shard:
        while len(self.shards) < self.want_shards:
            load[self._spawn()] = 0
        free = [s for s in self.shards if load[s] < self.per_shard]
        if not free:  # every shard at its open-file limit: one more process
            s = self._spawn()
            load[s] = 0
            return s
        return min(free, key=lambda s: (load[s], s.index))

    def attach(self, paths: Sequence[str], ingress_all: bool = False) -> None:
        """Attach namespaces (by path): bind a queue there and install the (empty) table; with
        ``ingress_all`` the table queues every arrival but lo's with one rule that never changes.

        Raises
        ------
        ApplyError
            A namespace could not be attached (the message names it); the others stay attached.
        """
        with self._lock:
            todo = [p for p in dict.fromkeys(paths) if p not in self.ns]
            if not todo:
                return
            if not self._modules_checked:
                # before any rule: a kernel that lacks the target answers each namespace's batch with ENOENT
                # only after a module request of its own (see emulator.kernel.modules)
                modules.ensure_xt_target("NFQUEUE", "the userspace shaper's NFQUEUE rules")
                self._modules_checked = True
            # as many shards as asked for, and as the open-file limit needs for every namespace attached
            total = len(self.ns) + len(todo)
            if self.shards_asked is None:
                self.want_shards = max(self.want_shards,
                                       min(os.cpu_count() or 1, -(-total // NAMESPACES_PER_SHARD)))
            want = max(self.want_shards, shards_needed(total, self.per_shard + FD_MARGIN))
            while len(self.shards) < want:
                self._spawn()
            load = {s: len(s.ids) for s in self.shards}
            work: dict[_Shard, list[str]] = {}
            placed: dict[_Shard, list[tuple[str, int]]] = {}
            for path in todo:
                s = self._pick_shard(load)
                nsid = s.new_id()
                s.ids[path] = nsid  # reserved; undone below on failure
                load[s] += 1
                seq = self._next_seq()
                setup = (nfnl.queue_config(self.queue_num, seq, bind=True)
                         + nfnl.queue_config(self.queue_num, seq + 1, maxlen=self.maxlen,
                                             flags=nfnl.NFQA_CFG_F_GSO, copy_bytes=COPY_BYTES))
                # The queue is bound before any rule exists, so no packet meets an unbound queue.
                batch, _ = nfnl.nft_table_batch(self.table, seq + 2, install=True,
                                                ingress_all_queue=self.queue_num if ingress_all else None)
                work.setdefault(s, []).append(f"ns {nsid} {path.encode().hex()} {(setup + batch).hex()}")
                placed.setdefault(s, []).append((path, nsid))
            replies = self._call("attach namespaces to delay daemon", work)
            first_err = None
            for s, rs in replies.items():
                for (path, nsid), r in zip(placed[s], rs, strict=True):
                    if r.startswith("ok"):
                        self.ns[path] = _Ns(s, nsid, ingress_all)
                    else:
                        del s.ids[path]
                        s.free_ids.append(nsid)
                        first_err = first_err or f"{path}: {r[4:]}"
            self._start_watch(len(self.ns))
            if first_err:
                raise ApplyError(f"delay daemon: {first_err}", operation="attach namespaces to delay daemon")

    def _start_watch(self, namespaces: int) -> None:
        """Start the standby threads in every shard that has none, when asked or (``watch`` None) from
        :data:`WATCH_MIN_NAMESPACES` namespaces on. A shard started later gets them at its first attach."""
        if not (self.watch or (self.watch is None and namespaces >= WATCH_MIN_NAMESPACES)):
            return
        todo = [s for s in self.shards if not s.watching]
        if not todo:
            return
        replies = self._call("start standby threads", {s: [f"watch {WATCH_PERIOD_NS} {WATCH_GRACE_NS}"] for s in todo})
        for s, rs in replies.items():
            self._check(rs, "start standby threads")
            s.watching = True

    def _rules_line(self, n: _Ns) -> str | None:
        """The nft request that makes the namespace's rules name exactly its held interfaces, if needed."""
        keys = frozenset(n.keys)  # set_ports leaves out what the catch-all rules queue
        if keys == n.ruled:
            return None
        egress = [k >> 1 for k in keys if not k & 1]
        ingress = [k >> 1 for k in keys if k & 1]
        data, _ = nfnl.nft_hold_rules_batch(self.table, self.queue_num, self._next_seq(len(keys) + 8),
                                            egress, ingress, n.ingress_all)
        n.ruled = keys
        return f"nft {n.nsid} {data.hex()}"

    def where(self, path: str) -> tuple[int, int] | None:
        """(shard index, namespace id in that shard) of an attached namespace, or None."""
        n = self.ns.get(path)
        return None if n is None else (n.shard.index, n.nsid)

    def set_delays(self, shard: np.ndarray, nsid: np.ndarray, ifindex: np.ndarray, ingress: np.ndarray,
                   delay_ns: np.ndarray, loss_pct: np.ndarray, lid: np.ndarray) -> None:
        """Change the delay and loss of interfaces the daemon holds already, given as arrays (one entry per
        element; ``shard``/``nsid`` as :meth:`where` gives them): what :meth:`set_ports` does for them, one
        request per shard, without forgets or rule changes (the held set does not change). Every entry is
        checked before any is sent.
        """
        if len(shard) == 0:
            return
        bad = ~((delay_ns >= 0) & (loss_pct >= 0) & (loss_pct <= 100) & (ifindex >= 1))
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise ApplyError(f"bad shape for namespace {int(nsid[k])}/{int(ifindex[k])}: {int(delay_ns[k])} ns, "
                             f"{float(loss_pct[k])} %", operation="shape")
        with self._lock:
            by_index = {s.index: s for s in self.shards}
            work: dict[_Shard, list[str]] = {}
            for si in np.unique(shard).tolist():
                s = by_index.get(si)
                if s is None:
                    raise ApplyError(f"delay daemon shard {si} is not running", operation="shape")
                k = shard == si
                entries = [f"{a} {b} {c} {d} {e!r} {f}" for a, b, c, d, e, f in zip(
                    nsid[k].tolist(), ifindex[k].tolist(), ingress[k].tolist(), delay_ns[k].tolist(),
                    loss_pct[k].astype(np.float64).tolist(), lid[k].tolist())]
                work[s] = [" ".join(["set", str(len(entries)), "0", *entries])]
            for rs in self._call("shape", work).values():
                self._check(rs, "shape")

    def route_epoch(self, mark: int, at_ns: int = 0) -> None:
        """Switch route tables at one instant in every namespace the daemon serves: every packet it accepts
        from ``at_ns`` (``time.monotonic_ns()``; a held packet by its due time, another by its verdict) on
        leaves with ``skb->mark = mark``, and the namespaces' fwmark rules pick the table. ``at_ns`` 0 or
        past: at once. One epoch waits at a time in each shard: a new call replaces one not yet due. ``mark``
        0 ends the marking (a packet leaves with the mark it came with; an arrival stamp is cleared).

        The route lookup happens after the verdict, so a table switched this way holds in the kernel from
        the instant, whatever the number of routes; what the new table needs (its routes, the links its next
        hops use) must be there before ``at_ns``.
        """
        if not 0 <= mark < 2**32 or at_ns < 0:
            raise ApplyError(f"route epoch: mark {mark} not in [0, 2**32) or instant {at_ns} < 0",
                             operation="route epoch")
        with self._lock:
            if not self.shards:
                raise ApplyError("route epoch: the delay daemon serves no namespace yet", operation="route epoch")
            for rs in self._call("route epoch", {s: [f"epoch {mark} {at_ns}"] for s in self.shards}).values():
                self._check(rs, "route epoch")

    def set_ports(self, ports: Sequence[tuple[Any, ...]], forget: Sequence[tuple[str, int, bool]] = ()) -> None:
        """Forget then add/change held interfaces, then update the rules of the namespaces touched.

        ``ports``: (ns path, ifindex, delay_ms, loss_pct, ingress, link id[, grouped]), ``grouped`` true for
        an egress hold on an interface of nfnl.HOLD_EGRESS_GROUP, which the catch-all rules of a namespace
        attached with ``ingress_all`` queue already (no rule of its own); ``forget``: (ns path, ifindex,
        ingress). Every entry is checked before any is sent.
        """
        with self._lock:
            per: dict[_Shard, tuple[list[str], list[str]]] = {}
            touched: dict[str, _Ns] = {}
            for path, ifindex, delay_ms, loss_pct, ingress, lid, *_grouped in ports:
                n = self.ns.get(path)
                if n is None:
                    raise ApplyError(f"namespace {path} not attached to the delay daemon", operation="shape")
                delay_ns = round(delay_ms * 1e6)
                if delay_ns < 0 or not 0 <= loss_pct <= 100 or ifindex < 1:
                    raise ApplyError(f"bad shape for {path}/{ifindex}: {delay_ms} ms, {loss_pct} %",
                                     operation="shape")
                per.setdefault(n.shard, ([], []))[0].append(
                    f"{n.nsid} {ifindex} {int(ingress)} {delay_ns} {float(loss_pct)!r} {lid & (2**64 - 1)}")
            for path, ifindex, ingress in forget:
                n = self.ns.get(path)
                if n is not None:  # a released namespace has nothing left to forget
                    per.setdefault(n.shard, ([], []))[1].append(f"{n.nsid} {ifindex} {int(ingress)}")
                    n.keys.discard(nfnl.hold_key(ifindex, ingress))
                    touched[path] = n
            for path, ifindex, _d, _l, ingress, _lid, *grouped in ports:
                n = self.ns[path]
                if n.ingress_all and (ingress or (grouped and grouped[0])):
                    continue  # the catch-all rules queue it
                key = nfnl.hold_key(ifindex, ingress)
                if key not in n.keys:  # a delay change alone leaves the rules as they are
                    n.keys.add(key)
                    touched[path] = n
            work: dict[_Shard, list[str]] = {}
            for s, (p, f) in per.items():
                work[s] = [" ".join(["set", str(len(p)), str(len(f)), *p, *f])]
            for n in touched.values():
                line = self._rules_line(n)
                if line:
                    work.setdefault(n.shard, []).append(line)
            for rs in self._call("shape", work).values():
                self._check(rs, "shape")

    def release(self, path: str) -> None:
        """Unbind the namespace's queue and remove its table, releasing what is held there now."""
        with self._lock:
            n = self.ns.pop(path, None)
            if n is None:
                return
            before = b""
            if n.ruled or n.ingress_all:  # rules out first: no new packets while the held ones leave
                before, _ = nfnl.nft_hold_rules_batch(self.table, self.queue_num, self._next_seq(), [], [], False)
            after, _ = nfnl.nft_table_batch(self.table, self._next_seq(), install=False)
            del n.shard.ids[path]
            n.shard.free_ids.append(n.nsid)
            replies = self._call("release namespace", {n.shard: [f"release {n.nsid} {before.hex()} {after.hex()}"]})
            for r in replies[n.shard]:
                if not r.startswith("ok"):
                    log.warning("releasing %s: %s", path, r)

    def stats(self, reset_late_max: bool = False) -> dict[str, Any]:
        """Counters of every shard since it started, summed (maxima: the largest), with lateness
        quantiles from the merged histogram. See :meth:`UserspaceShaper.stats` for the keys."""
        with self._lock:
            if not self.shards:
                return {}
            replies = self._call("stats", {s: [f"stats {int(reset_late_max)}"] for s in self.shards})
        st = Stats()
        per_shard_cpu_s = []
        ops: dict[str, dict[str, float]] = {}
        for s in self.shards:
            r = replies[s][0]
            self._check([r], "stats")
            for item in r.split()[1:]:
                k, v = item.split("=", 1)
                if k == "ops":  # kind:count:ns:max_ns, per kind of control request
                    for part in v.split(","):
                        name, n_, ns_, mx = part.split(":")
                        o = ops.setdefault(name, {"n": 0, "ms": 0.0, "max_ms": 0.0})
                        o["n"] += int(n_)
                        o["ms"] += int(ns_) / 1e6
                        o["max_ms"] = max(o["max_ms"], int(mx) / 1e6)
                    continue
                if k == "hist":
                    if v != "-":
                        for pair in v.split(","):
                            b, count = pair.split(":")
                            st.late_hist[int(b)] += int(count)
                    continue
                iv = int(v)
                if k.endswith("_max_ns") or k in ("busy_cpu_ns", "lead_ns", "rt_priority", "pool", "locked",
                                                  "epoch_mark", "carry"):
                    st.counters[k] = max(st.counters.get(k, iv), iv)
                else:
                    st.counters[k] = st.counters.get(k, 0) + iv
                if k == "cpu_ns":
                    per_shard_cpu_s.append(iv / 1e9)
        c = st.counters
        released, stamped = c.get("released", 0), c.get("stamped", 0)
        return {"queued": c["queued"], "verdicts": c["verdicts"], "dropped": c["dropped"],
                "overflow": c["overflow"], "unshaped": c["unshaped"], "held": c["held"],
                "verdict_errors": c["verdict_errors"], "released": released,
                "late_sum_us": c["late_sum_ns"] / 1e3,
                "late_mean_us": c["late_sum_ns"] / released / 1e3 if released else 0.0,
                "late_max_us": c["late_max_ns"] / 1e3, "late_p50_us": st.late_quantile_us(0.5),
                "late_p99_us": st.late_quantile_us(0.99), "busy_max_us": c["busy_max_ns"] / 1e3,
                "busy_cpu_us": c["busy_cpu_ns"] / 1e3, "lead_us": c["lead_ns"] / 1e3, "stamped": stamped,
                "read_lag_mean_us": c["read_lag_sum_ns"] / stamped / 1e3 if stamped else 0.0,
                "namespaces": c["namespaces"], "held_interfaces": c["held_interfaces"],
                "shards": len(self.shards), "cpu_s_per_shard": per_shard_cpu_s,
                "rt_priority": c["rt_priority"], "memory_locked": bool(c["locked"]), "backend": "compiled",
                # the route epoch's mark now (largest over shards) and epochs taken, summed over shards
                "epoch_mark": c.get("epoch_mark", 0), "epochs": c.get("epochs", 0),
                # lateness carried to the next hold: releases that left some, holds that made some up, and
                # how much (ms, summed); carry 2: one table shared by the shards, 1: each its own, 0: off
                "carry": c.get("carry", 0), "carried": c.get("carried", 0), "made_up": c.get("made_up", 0),
                "made_up_ms": c.get("made_up_ns", 0) / 1e6,
                # standby threads (all shards), their passes that released something, and the packets
                "standby_threads": c.get("watch", 0), "standby_passes": c.get("watch_passes", 0),
                "standby_released": c.get("watch_released", 0),
                # control requests by kind, summed over shards: count, time (ms) and the longest one (ms,
                # since the last reset): the shard releases nothing while one runs, unless it waits on the kernel
                "ops": ops,
                # cumulative (unless reset): differences between two reads give one interval's quantiles
                "late_hist": list(st.late_hist)}

    def close(self) -> None:
        """Ask every shard to remove its tables and exit; kill one that has not within 5 s. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            shards, self.shards = self.shards, []
            self.ns.clear()
        for s in shards:
            try:
                s.sock.setblocking(True)
                s.sock.sendall(b"close\n")
                s.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        for s in shards:
            try:
                s.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.warning("delay daemon shard %d (pid %d) did not exit; killing it", s.index, s.proc.pid)
                s.proc.kill()
                s.proc.wait()
            s.sock.close()
        if self._carry_fd is not None:
            os.close(self._carry_fd)
            self._carry_fd = None
        if self._cpu_hold is not None:
            self._cpu_hold.release()
