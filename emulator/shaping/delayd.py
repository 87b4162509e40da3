"""The delay daemon: one process that holds packets of every shaped port of every namespace for their
port's delay (and drops a seeded-random fraction of them), for kernels without sch_netem.

How a packet is delayed: in each attached namespace an nf_tables chain at postrouting/mangle sends every
packet not leaving through ``lo`` to nfnetlink_queue ``queue_num``; the daemon reads only the packet id
and the outgoing ifindex (copy mode META, GSO super-packets queued whole) and gives its ACCEPT verdict
when the packet is due. Per port, release = max(arrival + delay, previous release on that port), so a
link never reorders, not even while its delay shrinks. A timerfd armed at the earliest due time wakes
the single-threaded epoll loop with sub-millisecond precision.

Control: JSON lines on stdin, one reply line per request on stdout::

    {"id": 1, "op": "ns", "ns": "/proc/123/ns/net"}        attach a namespace (bind queue, add rule)
    {"id": 2, "op": "set", "ports": [[ns, ifindex, delay_ms, loss_pct], ...]}
    {"id": 3, "op": "forget", "ns": ns, "ifindex": 7}
    {"id": 4, "op": "release_ns", "ns": ns}               unbind, delete the rule, close the socket
    {"id": 5, "op": "stats"}
    {"id": 6, "op": "close"}                               remove every rule and exit

The daemon exits (removing its rules where the namespaces still exist) on "close", on EOF of stdin, on
SIGTERM, and when its parent dies (PR_SET_PDEATHSIG). Run as ``python -m emulator.shaping.delayd``.
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
_MAX_LEAD_NS = 200_000  # never release more than 0.2 ms early  # fairness between namespaces and the timer


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
    ports: dict[int, PortState] = field(default_factory=dict)
    out: list[bytes] = field(default_factory=list)


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


class Daemon:
    """State and event loop of the delay daemon (see module docstring)."""

    def __init__(self, queue_num: int, table: str, seed: int, maxlen: int) -> None:
        self.queue_num = queue_num
        self.table = table
        self.maxlen = maxlen
        self.rng = random.Random(seed)
        self.namespaces: dict[str, Namespace] = {}
        self.by_fd: dict[int, Namespace] = {}
        self.heap: list[tuple[int, int, Namespace, int]] = []
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

    def attach(self, path: str) -> None:
        if path in self.namespaces:
            return
        nsfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        sock = None
        try:
            sock = self._in_ns(nsfd, nfnl.open_socket)
            s = self._next_seq()
            nfnl.request(sock, nfnl.queue_config(self.queue_num, s, bind=True), {s})
            s = self._next_seq()
            nfnl.request(sock, nfnl.queue_config(self.queue_num, s, maxlen=self.maxlen,
                                                 flags=nfnl.NFQA_CFG_F_GSO), {s})
            # The queue is bound before the rule exists, so no packet meets an unbound queue.
            self._ruleset(nsfd, install=True)
        except BaseException:
            if sock is not None:
                sock.close()
            os.close(nsfd)
            raise
        sock.setblocking(False)
        ns = Namespace(path, nsfd, sock)
        self.namespaces[path] = ns
        self.by_fd[sock.fileno()] = ns
        self.ep.register(sock.fileno(), select.EPOLLIN)

    def _ruleset(self, nsfd: int, install: bool) -> None:
        def run() -> None:
            t = nfnl.open_socket(1 << 16)
            try:
                s = self._next_seq()
                data = nfnl.nft_queue_ruleset(self.table, self.queue_num, s, install=install)
                nfnl.request(t, data, {s + i for i in range(1, 6 if install else 3)})
            finally:
                t.close()

        self._in_ns(nsfd, run)

    def release(self, path: str) -> None:
        ns = self.namespaces.pop(path, None)
        if ns is None:
            return
        try:
            self._ruleset(ns.nsfd, install=False)
        except OSError as e:
            log.warning("removing delay rule in %s: %s", path, e)
        # Held packets of this namespace are released now: unbinding would drop them anyway.
        self._flush(everything_of=ns)
        self.ep.unregister(ns.sock.fileno())
        del self.by_fd[ns.sock.fileno()]
        ns.sock.close()
        os.close(ns.nsfd)

    def set_ports(self, ports: list[list[Any]]) -> None:
        for path, ifindex, delay_ms, loss_pct in ports:
            ns = self.namespaces.get(path)
            if ns is None:
                raise ValueError(f"namespace {path} not attached")
            delay_ns = round(float(delay_ms) * 1e6)
            loss = float(loss_pct) / 100.0
            if delay_ns < 0 or not 0.0 <= loss <= 1.0:
                raise ValueError(f"bad shape for {path}/{ifindex}: {delay_ms} ms, {loss_pct} %")
            st = ns.ports.get(int(ifindex))
            if st is None:
                ns.ports[int(ifindex)] = PortState(delay_ns, loss)
            else:
                st.delay_ns = delay_ns
                st.loss = loss

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "ns":
            self.attach(req["ns"])
        elif op == "set":
            self.set_ports(req["ports"])
        elif op == "forget":
            ns = self.namespaces.get(req["ns"])
            if ns is not None:
                ns.ports.pop(int(req["ifindex"]), None)
        elif op == "release_ns":
            self.release(req["ns"])
        elif op == "stats":
            st = self.stats
            return {"queued": st.queued, "verdicts": st.accepted, "dropped": st.dropped,
                    "unshaped": st.unshaped, "held": len(self.heap), "verdict_errors": st.verdict_errors,
                    "late_mean_us": st.late_sum_ns / st.released / 1e3 if st.released else 0.0,
                    "late_max_us": st.late_max_ns / 1e3, "lead_us": self.lead_ns / 1e3, "namespaces": len(self.namespaces)}
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
        for _ in range(_MAX_RECV_PER_WAKE):
            try:
                n = sock.recv_into(buf, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            now = time.monotonic_ns()
            for kind, pid, outdev in nfnl.parse_messages(buf, n):
                if kind == nfnl.NLMSG_ERROR:
                    if pid:
                        st.verdict_errors += 1  # e.g. verdict for a packet whose device went away
                    continue
                st.queued += 1
                port = ports.get(outdev)
                if port is None:
                    st.unshaped += 1
                    ns.out.append(nfnl.verdict(self.queue_num, pid, True))
                    continue
                if port.loss and rng.random() < port.loss:
                    st.dropped += 1
                    ns.out.append(nfnl.verdict(self.queue_num, pid, False))
                    continue
                rel = now + port.delay_ns
                rel = max(rel, port.last_release_ns)
                port.last_release_ns = rel
                self.seq += 1
                heapq.heappush(heap, (rel, self.seq, ns, pid))

    def _flush(self, everything_of: Namespace | None = None) -> None:
        heap, st = self.heap, self.stats
        now = time.monotonic_ns()
        if everything_of is not None:
            keep = []
            for item in heap:
                if item[2] is everything_of:
                    everything_of.out.append(nfnl.verdict(self.queue_num, item[3], True))
                else:
                    keep.append(item)
            heapq.heapify(keep)
            self.heap[:] = keep
        # Release up to ``lead_ns`` early: the measured wake-up latency of the timer, so that on average
        # a packet leaves at its due time rather than one wake-up later.
        due = now + self.lead_ns
        while heap and heap[0][0] <= due:
            rel, _, ns, pid = heapq.heappop(heap)
            ns.out.append(nfnl.verdict(self.queue_num, pid, True))
            late = now - rel
            st.late_sum_ns += late
            st.released += 1
            st.late_max_ns = max(st.late_max_ns, late)
        for ns in (self.namespaces.values() if everything_of is None else (everything_of,)):
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
        if everything_of is None:
            self.timer.arm(max(heap[0][0] - self.lead_ns, 1) if heap else 0)

    def run(self) -> None:
        while self.running:
            timeout = 0 if (self.heap and self.heap[0][0] <= time.monotonic_ns()) else -1
            for fd, _ev in self.ep.poll(timeout):
                if fd == self.timer.fd:
                    armed = self.timer.armed_ns
                    self.timer.clear()
                    if armed:
                        # EWMA (1/16) of how late the timer wakes us, bounded to [0, _MAX_LEAD_NS].
                        err = min(max(time.monotonic_ns() - armed, 0), _MAX_LEAD_NS)
                        self.lead_ns += (err - self.lead_ns) >> 4
                elif fd == self.ctl_in:
                    self._control()
                else:
                    ns = self.by_fd.get(fd)
                    if ns is not None:
                        self._receive(ns)
            self._flush()

    def shutdown(self) -> None:
        for path in list(self.namespaces):
            try:
                self.release(path)
            except OSError as e:
                log.warning("releasing %s: %s", path, e)
        self.timer.close()
        self.ep.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emulator.shaping.delayd", description=__doc__.split("\n")[0])
    ap.add_argument("--queue-num", type=int, default=DEFAULT_QUEUE_NUM)
    ap.add_argument("--table", default=DEFAULT_TABLE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--maxlen", type=int, default=65536, help="packets held per namespace, at most")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="delayd: %(levelname)s %(message)s", stream=sys.stderr)
    # Die with the emulator (the thread that started us, strictly), and keep timer wake-ups exact.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    _libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    if os.getppid() == 1:
        return 1
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
