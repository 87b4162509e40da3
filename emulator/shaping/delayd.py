"""The delay daemon: one process that holds packets of every shaped port of every namespace for their
port's delay (and drops a seeded-random fraction of them), for kernels without sch_netem.

Where a packet is held: each attached namespace gets an nf_tables table with two base chains at mangle
priority, prerouting and postrouting, whose rules send to nfnetlink_queue ``queue_num`` only the packets
of held interfaces -- arriving on one (``meta iif``, *ingress* hold) or leaving through one (``meta oif``,
*egress* hold). Unheld interfaces are not detoured through user space. An ingress hold at the receiving
end of a veth is what TCP needs: at the sender's postrouting the skb still belongs to the local socket
and TCP Small Queues lets only a couple of packets per socket sit below TCP, so a held packet stalls the
flow; once across the veth it is orphaned and no longer counts against the socket.

The daemon reads only the packet id, hook and interface (copy mode META, GSO super-packets queued whole)
and gives its ACCEPT verdict when the packet is due. Per held interface, release = max(arrival + delay,
previous release), so a link never reorders, not even while its delay shrinks. A timerfd armed at the
earliest due time wakes the single-threaded epoll loop with sub-millisecond precision. The timer is
armed early by the measured time from its expiry to the verdicts' hand-over to the kernel (wake-up plus
the loop's own work; the kernel forwards the packet, up to the next hop's arrival stamp, within that
send), so that a packet leaves, on average, when it is due.

Control: JSON lines on stdin, one reply line per request on stdout::

    {"id": 1, "op": "ns", "ns": "/proc/123/ns/net"}        attach a namespace (bind queue, add table)
    {"id": 1, "op": "ns", "ns": [path, ...], "ingress_all": true}   attach many; queue every arrival
                                                           (but lo's) with one rule that never changes
    {"id": 2, "op": "set", "ports": [[ns, ifindex, delay_ms, loss_pct, ingress], ...],
                           "forget": [[ns, ifindex, ingress], ...]}      (forget first; both optional)
    {"id": 3, "op": "forget", "ns": ns, "ifindex": 7, "ingress": false}
    {"id": 4, "op": "release_ns", "ns": ns}               unbind, delete the table, close the socket
    {"id": 5, "op": "stats"}
    {"id": 6, "op": "close"}                               remove every table and exit

``ingress`` (default false) says whether ``ifindex``'s arriving (true) or departing (false) packets are
held. The daemon exits (removing its tables where the namespaces still exist) on "close", on EOF of
stdin, on SIGTERM, and when its parent dies (PR_SET_PDEATHSIG). Run as ``python -m emulator.shaping.delayd``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import heapq
import json
import logging
import os
import random
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from emulator.netns import setns
from emulator.shaping import nfnl

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
PR_SET_PDEATHSIG = 1
PR_SET_TIMERSLACK = 29
CLOCK_MONOTONIC = 1
TFD_NONBLOCK = 0o4000
TFD_CLOEXEC = 0o2000000
TFD_TIMER_ABSTIME = 1
DEFAULT_QUEUE_NUM = 4711
DEFAULT_TABLE = "satnetem_delay"
_MAX_VERDICTS_PER_SEND = 4096  # 32 B each: stays well under the socket's send buffer
_MAX_RECV_PER_WAKE = 1024
_MAX_READ_LAG_US = 2_000_000  # an arrival stamp older than this is not ours: count from the read
_MAX_LEAD_NS = 200_000  # never release more than 0.2 ms early (tests rely on it)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class TimerFd:
    """CLOCK_MONOTONIC timerfd (Python 3.11 has no os.timerfd_*), armed at absolute ns deadlines."""

    def __init__(self) -> None:
        fd = _libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")
        self.fd = fd
        self.armed_ns = 0
        self._spec = _Itimerspec()

    def arm(self, deadline_ns: int) -> None:
        """Fire at monotonic time ``deadline_ns``; 0 disarms."""
        if deadline_ns == self.armed_ns:
            return
        self._spec.it_value.tv_sec, self._spec.it_value.tv_nsec = divmod(deadline_ns, 1_000_000_000)
        if deadline_ns and self._spec.it_value.tv_sec == 0 and self._spec.it_value.tv_nsec == 0:
            self._spec.it_value.tv_nsec = 1
        if _libc.timerfd_settime(self.fd, TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")
        self.armed_ns = deadline_ns

    def clear(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass
        self.armed_ns = 0

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class PortState:
    delay_ns: int
    loss: float  # probability in [0, 1]
    last_release_ns: int = 0


@dataclass(eq=False)
class Namespace:
    path: str
    nsfd: int
    sock: socket.socket
    ports: dict[int, PortState] = field(default_factory=dict)  # by nfnl.hold_key(ifindex, ingress)
    out: list[bytes] = field(default_factory=list)
    ruled: frozenset[int] = frozenset()  # hold keys the kernel's rules queue now
    ingress_all: bool = False  # one rule queues every arrival (but lo's); ingress keys need no rule


_LATE_BIN_NS = 5_000
_LATE_LOW_NS = 1_000_000
_LATE_BINS = 2_200  # -1 ms to +10 ms


@dataclass
class Stats:
    queued: int = 0
    accepted: int = 0
    dropped: int = 0
    unshaped: int = 0
    late_sum_ns: int = 0
    late_max_ns: int = 0
    released: int = 0
    verdict_errors: int = 0
    busy_max_ns: int = 0  # longest single pass of the loop (receiving + releasing), wall clock, ns
    busy_cpu_ns: int = 0  # CPU time of that pass, ns (much less than busy_max_ns: we were preempted)
    stamped: int = 0  # packets whose delay counted from their arrival stamp (the mark)
    read_lag_sum_ns: int = 0  # sum over those of (read time - arrival time), ns
    # release lateness histogram: _LATE_BIN_NS wide bins from -_LATE_LOW_NS; the last bin is everything later
    late_hist: list[int] = field(default_factory=lambda: [0] * (_LATE_BINS + 1))

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
                if i == _LATE_BINS:
                    return None
                return (i * _LATE_BIN_NS - _LATE_LOW_NS + _LATE_BIN_NS / 2) / 1e3
        return None


class Daemon:
    """State and event loop of the delay daemon (see module docstring)."""

    def __init__(self, queue_num: int, table: str, seed: int, maxlen: int) -> None:
        self.queue_num = queue_num
        self.table = table
        self.maxlen = maxlen
        self.rng = random.Random(seed)
        self.namespaces: dict[str, Namespace] = {}
        self.by_fd: dict[int, Namespace] = {}
        # (release time ns, seq, namespace, packet id, mark to set at release or None)
        self.heap: list[tuple[int, int, Namespace, int, int | None]] = []
        self.dirty: list[Namespace] = []  # namespaces with verdicts to send, each added as its out fills
        self.seq = 0
        self.nl_seq = 1
        self.stats = Stats()
        self.lead_ns = 0
        self.timer = TimerFd()
        self.ep = select.epoll()
        self.ep.register(self.timer.fd, select.EPOLLIN)
        self.ctl_in = 0  # stdin
        os.set_blocking(self.ctl_in, False)
        self.ep.register(self.ctl_in, select.EPOLLIN)
        self.ctl_buf = b""
        self.running = True
        self.buf = bytearray(1 << 16)

    # ----------------------------------------------------------------- control

    def _in_ns(self, nsfd: int, fn):
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(nsfd)
            try:
                return fn()
            finally:
                setns(own)
        finally:
            os.close(own)

    def _next_seq(self, n: int = 10) -> int:
        s = self.nl_seq
        self.nl_seq += n
        return s

    def attach(self, path: str, ingress_all: bool = False) -> None:
        """Attach one namespace: open its queue socket there, bind the queue, install the empty table.

        Both are sent on the one socket (it carries no packet until a rule names an interface), so a
        namespace costs two setns(2) calls and two round trips.
        """
        if path in self.namespaces:
            return
        nsfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        sock = None
        try:
            sock = self._in_ns(nsfd, nfnl.open_socket)
            s = self._next_seq()
            cfg = (nfnl.queue_config(self.queue_num, s, bind=True)
                   + nfnl.queue_config(self.queue_num, s + 1, maxlen=self.maxlen, flags=nfnl.NFQA_CFG_F_GSO))
            nfnl.request(sock, cfg, {s, s + 1})
            # The queue is bound before any rule exists, so no packet meets an unbound queue.
            # One transaction: each waits for an RCU grace period after the previous one.
            data, seqs = nfnl.nft_table_batch(self.table, self._next_seq(16), install=True,
                                              ingress_all_queue=self.queue_num if ingress_all else None)
            nfnl.request(sock, data, seqs)
        except BaseException:
            if sock is not None:
                sock.close()
            os.close(nsfd)
            raise
        sock.setblocking(False)
        ns = Namespace(path, nsfd, sock, ingress_all=ingress_all)
        self.namespaces[path] = ns
        self.by_fd[sock.fileno()] = ns
        self.ep.register(sock.fileno(), select.EPOLLIN)

    def _nft(self, nsfd: int, build) -> None:
        """Send one nf_tables batch ``build(seq) -> (data, seqs)`` in the namespace and wait for its acks."""
        def run() -> None:
            t = nfnl.open_socket(1 << 16)
            try:
                data, seqs = build(1)  # a fresh socket: its sequence numbers need only be unique on it
                nfnl.request(t, data, seqs)
            finally:
                t.close()

        self._in_ns(nsfd, run)

    def _table(self, nsfd: int, install: bool) -> None:
        self._nft(nsfd, lambda seq: nfnl.nft_table_batch(self.table, seq, install=install))

    def _sync_rules(self, ns: Namespace) -> None:
        """Make the namespace's queue rules name exactly its held interfaces (if they do not already)."""
        keys = frozenset(k for k in ns.ports if not (ns.ingress_all and k & 1))
        if keys == ns.ruled:
            return
        egress = [k >> 1 for k in keys if not k & 1]
        ingress = [k >> 1 for k in keys if k & 1]
        self._nft(ns.nsfd, lambda seq: nfnl.nft_hold_rules_batch(self.table, self.queue_num, seq,
                                                                  egress, ingress, ns.ingress_all))
        ns.ruled = keys

    def release(self, path: str) -> None:
        ns = self.namespaces.pop(path, None)
        if ns is None:
            return
        # Rules go first (no new packets are queued), then held packets are released, then the table:
        # deleting its chains would make the kernel drop whatever is still queued in the namespace.
        ns.ports.clear()
        ns.ingress_all = False
        ns.ruled = frozenset((-1,))  # force the rules out, the catch-all one included
        try:
            self._sync_rules(ns)
        except OSError as e:
            log.warning("removing delay rules in %s: %s", path, e)
        self._flush(everything_of=ns)
        try:
            self._table(ns.nsfd, install=False)
        except OSError as e:
            log.warning("removing delay table in %s: %s", path, e)
        self.ep.unregister(ns.sock.fileno())
        del self.by_fd[ns.sock.fileno()]
        ns.sock.close()
        os.close(ns.nsfd)

    def _ns(self, path: str) -> Namespace:
        ns = self.namespaces.get(path)
        if ns is None:
            raise ValueError(f"namespace {path} not attached")
        return ns

    def set_ports(self, ports: list[list[Any]], forget: list[list[Any]] = ()) -> None:
        """Forget then add/change held interfaces; then update the rules of the namespaces touched.

        All entries are checked before any is applied, so a bad request changes nothing.
        """
        parsed = []
        for entry in ports:
            path, ifindex, delay_ms, loss_pct = entry[:4]
            ingress = bool(entry[4]) if len(entry) > 4 else False
            delay_ns = round(float(delay_ms) * 1e6)
            loss = float(loss_pct) / 100.0
            if delay_ns < 0 or not 0.0 <= loss <= 1.0 or int(ifindex) < 1:
                raise ValueError(f"bad shape for {path}/{ifindex}: {delay_ms} ms, {loss_pct} %")
            parsed.append((self._ns(path), nfnl.hold_key(int(ifindex), ingress), delay_ns, loss))
        gone = []
        for entry in forget:
            path, ifindex = entry[:2]
            ingress = bool(entry[2]) if len(entry) > 2 else False
            ns = self.namespaces.get(path)  # a released namespace has nothing left to forget
            if ns is not None:
                gone.append((ns, nfnl.hold_key(int(ifindex), ingress)))
        touched: dict[str, Namespace] = {}
        for ns, key in gone:
            ns.ports.pop(key, None)
            touched[ns.path] = ns
        for ns, key, delay_ns, loss in parsed:
            st = ns.ports.get(key)
            if st is None:
                ns.ports[key] = PortState(delay_ns, loss)
            else:
                st.delay_ns = delay_ns
                st.loss = loss
            touched[ns.path] = ns
        for ns in touched.values():
            self._sync_rules(ns)

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "ns":  # one path, or a list of paths (bring-up: one request for every namespace)
            paths = req["ns"]
            for path in ([paths] if isinstance(paths, str) else paths):
                self.attach(path, bool(req.get("ingress_all", False)))
        elif op == "set":
            self.set_ports(req.get("ports", []), req.get("forget", []))
        elif op == "forget":
            self.set_ports([], [[req["ns"], req["ifindex"], req.get("ingress", False)]])
        elif op == "release_ns":
            self.release(req["ns"])
        elif op == "stats":
            st = self.stats
            reply = {"queued": st.queued, "verdicts": st.accepted, "dropped": st.dropped,
                     "unshaped": st.unshaped, "held": len(self.heap), "verdict_errors": st.verdict_errors,
                     "released": st.released, "late_sum_us": st.late_sum_ns / 1e3,
                     "late_mean_us": st.late_sum_ns / st.released / 1e3 if st.released else 0.0,
                     "late_max_us": st.late_max_ns / 1e3, "late_p50_us": st.late_quantile_us(0.5),
                     "late_p99_us": st.late_quantile_us(0.99), "busy_max_us": st.busy_max_ns / 1e3,
                     "busy_cpu_us": st.busy_cpu_ns / 1e3,
                     "lead_us": self.lead_ns / 1e3, "stamped": st.stamped,
                     "read_lag_mean_us": st.read_lag_sum_ns / st.stamped / 1e3 if st.stamped else 0.0,
                     "namespaces": len(self.namespaces),
                     "held_interfaces": sum(len(ns.ports) for ns in self.namespaces.values())}
            if req.get("reset_late_max"):
                st.late_max_ns = st.busy_max_ns = st.busy_cpu_ns = 0
            return reply
        elif op == "close":
            self.running = False
        else:
            raise ValueError(f"unknown op {op!r}")
        return {}

    def _control(self) -> None:
        while True:
            try:
                chunk = os.read(self.ctl_in, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:  # the emulator went away
                self.running = False
                break
            self.ctl_buf += chunk
        while b"\n" in self.ctl_buf:
            line, self.ctl_buf = self.ctl_buf.split(b"\n", 1)
            if not line.strip():
                continue
            rid = None
            try:
                req = json.loads(line)
                rid = req.get("id")
                reply = {"id": rid, "ok": True, **self.handle(req)}
            except (OSError, ValueError, KeyError, TypeError) as e:
                reply = {"id": rid, "ok": False, "error": f"{type(e).__name__}: {e}"}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()

    # ----------------------------------------------------------------- data path

    def _receive(self, ns: Namespace) -> None:
        sock, buf, heap, rng, st = ns.sock, self.buf, self.heap, self.rng, self.stats
        ports = ns.ports
        if not ns.out:
            self.dirty.append(ns)  # for the verdicts given at once (unshaped, dropped); skipped if none
        for _ in range(_MAX_RECV_PER_WAKE):
            try:
                n = sock.recv_into(buf, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            now = time.monotonic_ns()
            # Reading must not starve releasing: under a flood the socket never drains, and every packet
            # already held would be released late by as long as reading went on (this was the ~64 ms
            # maximum lateness under a UDP flood). Stop after this batch once something is due.
            due_break = bool(heap) and heap[0][0] <= now + self.lead_ns
            now_us = now // 1000
            for kind, pid, key, mark in nfnl.parse_messages_marked(buf, n):
                if kind == nfnl.NLMSG_ERROR:
                    if pid:
                        st.verdict_errors += 1  # e.g. verdict for a packet whose device went away
                    continue
                st.queued += 1
                port = ports.get(key)
                if port is None:
                    st.unshaped += 1
                    ns.out.append(nfnl.verdict(self.queue_num, pid, True))
                    continue
                if port.loss and rng.random() < port.loss:
                    st.dropped += 1
                    ns.out.append(nfnl.verdict(self.queue_num, pid, False))
                    continue
                # An arrival held at ingress carries its arrival time (us, 32 bits) in the mark, stamped
                # at tc ingress (see emulator.shaping.userspace): the delay counts from there, not from
                # when we got round to reading it. No mark (or an implausible one): from now.
                arrived = now
                stamped = False
                if mark and key & 1:
                    ago_us = (now_us - mark) & 0xFFFFFFFF
                    if ago_us <= _MAX_READ_LAG_US:
                        arrived = (now_us - ago_us) * 1000 + 500  # +500: the stamp was truncated
                        st.stamped += 1
                        st.read_lag_sum_ns += now - arrived
                        stamped = True
                rel = arrived + port.delay_ns
                rel = max(rel, port.last_release_ns)
                port.last_release_ns = rel
                self.seq += 1
                # a stamped packet leaves with the mark it came with (0: crossing the veth scrubbed it), so
                # that fwmark rules inside the node see what they would without the emulator
                heapq.heappush(heap, (rel, self.seq, ns, pid, 0 if stamped else None))
            if due_break:
                return

    def _flush(self, everything_of: Namespace | None = None) -> None:
        heap, st = self.heap, self.stats
        now = time.monotonic_ns()
        if everything_of is not None:
            keep = []
            for item in heap:
                if item[2] is everything_of:
                    if not everything_of.out:
                        self.dirty.append(everything_of)
                    everything_of.out.append(nfnl.verdict(self.queue_num, item[3], True, item[4]))
                else:
                    keep.append(item)
            heapq.heapify(keep)
            self.heap[:] = keep
        # Release up to ``lead_ns`` early: the measured time from the timer's expiry to the verdicts
        # being sent, so that on average a packet leaves at its due time rather than that much later.
        due = now + self.lead_ns
        dirty = self.dirty
        released = []
        while heap and heap[0][0] <= due:
            rel, _, ns, pid, mark = heapq.heappop(heap)
            if not ns.out:
                dirty.append(ns)
            ns.out.append(nfnl.verdict(self.queue_num, pid, True, mark))
            released.append(rel)
        # Only the namespaces with verdicts waiting: a loop over all of them (1,600 in a Starlink shell)
        # would add its own time to every release.
        for ns in dirty:
            if not ns.out:
                continue
            out = ns.out
            st.accepted += len(out)
            for i in range(0, len(out), _MAX_VERDICTS_PER_SEND):
                try:
                    ns.sock.send(b"".join(out[i:i + _MAX_VERDICTS_PER_SEND]))
                except OSError as e:
                    log.error("verdicts to %s: %s", ns.path, e)
            ns.out = []
        dirty.clear()
        if released:
            # lateness as the packet sees it: from its due time to its verdict's hand-over to the kernel
            sent, hist = time.monotonic_ns(), st.late_hist
            for rel in released:
                late = sent - rel
                b = (late + _LATE_LOW_NS) // _LATE_BIN_NS
                hist[0 if b < 0 else b if b < _LATE_BINS else _LATE_BINS] += 1
                st.late_sum_ns += late
                st.late_max_ns = max(st.late_max_ns, late)
            st.released += len(released)
        if everything_of is None:
            self.timer.arm(max(heap[0][0] - self.lead_ns, 1) if heap else 0)

    def run(self) -> None:
        st = self.stats
        while self.running:
            timeout = 0 if (self.heap and self.heap[0][0] <= time.monotonic_ns()) else -1
            events = self.ep.poll(timeout)
            t0, c0 = time.monotonic_ns(), time.thread_time_ns()
            armed = 0
            for fd, _ev in events:
                if fd == self.timer.fd:
                    armed = self.timer.armed_ns
                    self.timer.clear()
                elif fd == self.ctl_in:
                    self._control()
                else:
                    ns = self.by_fd.get(fd)
                    if ns is not None:
                        self._receive(ns)
            self._flush()
            if armed:
                # EWMA (1/16) of the time from the timer's expiry to the verdicts being sent (by then the
                # kernel has forwarded the packets), bounded to [0, _MAX_LEAD_NS].
                err = min(max(time.monotonic_ns() - armed, 0), _MAX_LEAD_NS)
                self.lead_ns += (err - self.lead_ns) >> 4
            # Lateness beyond this figure is time the daemon was not on a CPU, not work it did.
            busy = time.monotonic_ns() - t0
            if busy > st.busy_max_ns:
                st.busy_max_ns, st.busy_cpu_ns = busy, time.thread_time_ns() - c0

    def shutdown(self) -> None:
        """Release every held packet and delete every table, fast: one nf_tables batch per namespace sent
        on the namespace's own queue socket (no setns, no new socket), without waiting between them.

        nfnetlink runs a batch inside ``send``, so the tables are gone when it returns; the acks are only
        read for errors. Closing a socket unbinds its queue.
        """
        for ns in list(self.namespaces.values()):
            self._flush(everything_of=ns)
        pending: list[tuple[Namespace, set[int]]] = []
        for ns in self.namespaces.values():
            data, seqs = nfnl.nft_table_batch(self.table, self._next_seq(16), install=False)
            try:
                ns.sock.setblocking(True)
                ns.sock.sendall(data)
                pending.append((ns, seqs))
            except OSError as e:  # the namespace is already gone with its table
                log.debug("removing delay table in %s: %s", ns.path, e)
        for ns, seqs in pending:
            try:
                ns.sock.settimeout(0.5)
                while seqs:
                    n = ns.sock.recv_into(self.buf)
                    for kind, a, b in nfnl.parse_messages(self.buf, n):
                        if kind == nfnl.NLMSG_ERROR and b in seqs:
                            seqs.discard(b)
                            # ENOENT on DELTABLE cannot happen (NEWTABLE precedes it in the batch)
                            if a:
                                log.warning("removing delay table in %s: %s", ns.path, os.strerror(-a))
            except OSError as e:
                log.debug("acks of table removal in %s: %s", ns.path, e)
        for ns in list(self.namespaces.values()):
            ns.sock.close()
            os.close(ns.nsfd)
        self.namespaces.clear()
        self.by_fd.clear()
        self.timer.close()
        self.ep.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emulator.shaping.delayd", description=__doc__.split("\n")[0])
    ap.add_argument("--queue-num", type=int, default=DEFAULT_QUEUE_NUM)
    ap.add_argument("--table", default=DEFAULT_TABLE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--maxlen", type=int, default=65536, help="packets held per namespace, at most")
    ap.add_argument("--nice", type=int, default=-10,
                    help="scheduling niceness (netem runs in softirq, ahead of every process; the daemon "
                         "standing in for it should not wait behind the traffic generators)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="delayd: %(levelname)s %(message)s", stream=sys.stderr)
    # Die with the emulator (the thread that started us, strictly), and keep timer wake-ups exact.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    _libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    if os.getppid() == 1:
        return 1
    try:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    except OSError as e:
        log.warning("cannot set niceness %d (%s): release times will suffer more under load", args.nice, e)
    daemon = Daemon(args.queue_num, args.table, args.seed, args.maxlen)

    def on_term(_signum: int, _frame: Any) -> None:
        daemon.running = False
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the emulator handles ^C and closes us
    try:
        daemon.run()
    except SystemExit:
        pass
    finally:
        daemon.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
