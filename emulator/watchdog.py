"""Stop a run whose delays or routes can no longer be guaranteed, instead of letting it go on silently.

A run depends on processes it started and cannot replace in the middle: the delay daemon's shards (each
holds the packets of its namespaces and applies their links' delays), the namespace holder (its bind
mounts keep the nodes' namespaces alive), a daemon-driven protocol's routing daemons (a killed BIRD's
routes stay in its namespace, frozen, while the links change under them) and the traffic programs (their
samples are the run's result); and on room in the results folder. If one dies, whether killed from
outside or crashed, packets are no longer delayed or routed as the timeline says, nodes vanish or samples
stop; a step may only notice it much later (the next change on one of the shard's links) or never.
:class:`Watchdog` checks them every ``interval_s`` (0.2 s: a dead part is noticed well within the 2 s a
run has to stop) and calls ``on_fault`` once with one line saying what died; the runner then stops the
clock, tears down and marks the run incomplete.

A check is a callable returning None while all is well, else the line. The checks read ``/proc``,
``statvfs`` or a child's exit status (``Popen.poll``, a few microseconds: one per traffic program and
routing daemon), or drain one netlink socket (:class:`LinkWatch`: an interface of a node deleted from
outside the run).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Check = Callable[[], str | None]


def shards_alive(shaper: Any) -> Check | None:
    """A check that every delay daemon shard running now is still running, or None for a shaper
    without processes (netem: the kernel does the work)."""
    first = list(getattr(shaper, "pids", None) or [])
    if not first:
        return None

    def check() -> str | None:
        live = set(shaper.pids)
        dead = [p for p in first if p not in live]
        if dead:
            return (f"delay daemon shard {first.index(dead[0])} (pid {dead[0]}) has ended: the delays of its "
                    f"namespaces' links are no longer applied")
        return None

    return check


def holder_alive(holder: Any) -> Check | None:
    """A check that the namespace holder (:class:`emulator.kernel.holder.Holder`) still runs."""
    if holder is None or holder.pid is None:
        return None

    def check() -> str | None:
        rc = holder.poll()
        if rc is not None:
            return (f"the namespace holder (pid {holder.pid}) has ended (status {rc}): the nodes' namespaces "
                    f"went with it")
        return None

    return check


def routing_daemons_alive(protocol: Any) -> Check | None:
    """A check that a daemon-driven protocol's daemons still run (its ``health()``,
    :meth:`routing.daemon.DaemonProtocol.health`), or None for a protocol the emulator computes itself."""
    health = getattr(protocol, "health", None)
    return health if callable(health) else None


def _program(args: Any) -> str:
    """The program a node's ``popen`` ran: ``ping`` out of ``setsid nsenter --net=... -- stdbuf -oL ping ...``,
    ``udpprobe`` out of ``python -m emulator.traffic.udpprobe``."""
    argv = [str(a) for a in args] if isinstance(args, (list, tuple)) else str(args).split()
    if "--" in argv:
        argv = argv[argv.index("--") + 1:]
    while argv and os.path.basename(argv[0]) in ("stdbuf", "setsid", "nsenter"):
        argv = argv[1:]
        while argv and argv[0].startswith("-"):
            argv = argv[1:]
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1].rsplit(".", 1)[-1]
    return os.path.basename(argv[0]) if argv else "?"


def traffic_alive(starter: Any, note: Callable[[str], None]) -> Check | None:
    """A check on the programs of the scenario's traffic (``starter.flows``, :class:`emulator.flows.Flow`,
    read afresh each time: flows with a ``start_s`` join later).

    A program killed by a signal while the run plays was killed from outside (the run stops its programs
    only after the watchdog: SIGINT, then SIGKILL in the teardown; node programs run in their own session,
    so a Ctrl-C at the terminal does not reach them): its flow's samples end there, unnoticed but for a
    loss figure, so that is a fault. A program that exits on its own with an error status before its flow's
    end (``ping`` finding no route when it starts, ``iperf3`` refused) has measured what it could; that is
    said once in a line (``note``), and the run goes on. Status 0 is a program done with its work (the ranks
    of an all-reduce end after their rounds): not said."""
    if starter is None:
        return None
    seen: set[int] = set()

    def check() -> str | None:
        now = time.time()
        for fl in list(starter.flows):
            for p in list(fl.procs):
                if p.pid in seen:
                    continue
                rc = p.poll()
                if rc is None:
                    continue
                seen.add(p.pid)
                rec, prog = fl.record, _program(p.args)
                if rc < 0:
                    try:
                        how = signal.Signals(-rc).name
                    except ValueError:
                        how = f"signal {-rc}"
                    return (f"traffic program {prog} of flow {rec.label} (pid {p.pid}) was killed by {how}: the "
                            f"flow's samples end there")
                left_s = rec.start_unix_s + rec.duration_s - now
                if rc > 0 and left_s > 1.0:  # status 0: done with its work (an all-reduce's ranks after their rounds)
                    note(f"traffic: {prog} of flow {rec.label} (pid {p.pid}) ended on its own with status {rc}, "
                         f"{left_s:.0f} s before the flow's end (its log is in the flow's folder)")
        return None

    return check


def results_space(folder: Path, min_free_bytes: int = 1 << 20) -> Check:
    """A check that the file system of the results folder still has ``min_free_bytes`` free.

    Below that, the run's files (the traffic programs write their own, and cannot report a failed write)
    would be cut mid-line or go unwritten; stopping while a megabyte is left keeps everything written so
    far whole and leaves room for ``summary.json``. ``statvfs`` is a few microseconds."""

    def check() -> str | None:
        st = os.statvfs(folder)
        free = st.f_bavail * st.f_frsize
        if free < min_free_bytes:
            return (f"the file system of the results folder {folder} has {free // 1024} kB free (below "
                    f"{min_free_bytes // 1024} kB): its files can no longer be written whole")
        return None

    return check


# netlink: linux/netlink.h, linux/rtnetlink.h, linux/net_namespace.h, linux/if_link.h
_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, _NETLINK_LISTEN_ALL_NSID = 270, 1, 8
_RTNLGRP_LINK = 1
_RTM_DELLINK, _RTM_NEWNSID, _RTM_GETNSID = 17, 88, 90
_NLMSG_ERROR, _NLM_F_REQUEST, _NLM_F_ACK = 2, 1, 4
_NETNSA_NSID, _NETNSA_FD = 1, 3
_IFLA_IFNAME, _IFLA_NEW_NETNSID = 3, 45
_HDR = struct.Struct("=IHHII")


def _attr(kind: int, value: int) -> bytes:
    return struct.pack("=HHi", 8, kind, value)


class LinkWatch:
    """Interfaces of the run's namespaces deleted from outside it (``ip link del`` in a node), seen as they go.

    One netlink socket in the host's namespace, listening to every namespace that has an id there
    (``NETLINK_LISTEN_ALL_NSID``); the constructor gives each of the run's namespaces an id (as ``ip netns
    set NAME auto`` does). While it plays, the run deletes only the spare pairs it remakes at their next
    satellite (:mod:`emulator.spares`), and says so first (:meth:`expect`); a spare moved to another
    namespace (a clustered run's part) leaves with the mark of the namespace it went to
    (``IFLA_NEW_NETNSID``). Any other removal, in one of the run's namespaces, is someone else's. One
    descriptor whatever the constellation's size; the build pays two netlink round trips per namespace.
    """

    def __init__(self, ns_paths: dict[str, str], rcvbuf_bytes: int = 16 << 20) -> None:
        self.node_of: dict[int, str] = {}
        self.lost_events = False
        # (node, interface) -> deletions the run announced and the watch has not seen yet
        self._expected: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf_bytes)  # SO_RCVBUFFORCE (root): bursts of moves
            self.sock.bind((0, 0))
            self.sock.setsockopt(_SOL_NETLINK, _NETLINK_LISTEN_ALL_NSID, 1)
            self.sock.setsockopt(_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, _RTNLGRP_LINK)
            self.sock.setblocking(False)
            with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as ctl:
                ctl.bind((0, 0))
                for seq, (node, path) in enumerate(ns_paths.items(), start=1):
                    self.node_of[self._nsid(ctl, path, 2 * seq)] = node
        except BaseException:
            self.sock.close()
            raise

    @staticmethod
    def _ask(ctl: socket.socket, kind: int, flags: int, seq: int, attrs: bytes) -> tuple[int, bytes]:
        body = b"\0\0\0\0" + attrs  # struct rtgenmsg, padded
        ctl.send(_HDR.pack(_HDR.size + len(body), kind, _NLM_F_REQUEST | flags, seq, 0) + body)
        while True:
            data = ctl.recv(65536)
            _, typ, _, got, _ = _HDR.unpack_from(data)
            if got != seq:
                continue
            if typ == _NLMSG_ERROR:
                return -struct.unpack_from("=i", data, _HDR.size)[0], b""
            return 0, data[_HDR.size + 4:]

    def _nsid(self, ctl: socket.socket, path: str, seq: int) -> int:
        """The id of the namespace at ``path`` in ours, given one if it has none."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            err, _ = self._ask(ctl, _RTM_NEWNSID, _NLM_F_ACK, seq, _attr(_NETNSA_FD, fd) + _attr(_NETNSA_NSID, -1))
            if err not in (0, errno.EEXIST):
                raise OSError(err, f"cannot give the namespace {path} an id: {os.strerror(err)}")
            err, attrs = self._ask(ctl, _RTM_GETNSID, 0, seq + 1, _attr(_NETNSA_FD, fd))
            if err:
                raise OSError(err, f"cannot read the id of the namespace {path}: {os.strerror(err)}")
        finally:
            os.close(fd)
        return struct.unpack_from("=i", self._attrs(attrs)[_NETNSA_NSID])[0]

    def expect(self, node: str, ifname: str) -> None:
        """The run is about to delete interface ``ifname`` of ``node`` itself: its removal is not a fault.
        Thread-safe (the deleting thread is not the watchdog's)."""
        with self._lock:
            key = (node, ifname)
            self._expected[key] = self._expected.get(key, 0) + 1

    def _announced(self, node: str, ifname: str) -> bool:
        with self._lock:
            key = (node, ifname)
            n = self._expected.get(key, 0)
            if not n:
                return False
            if n == 1:
                del self._expected[key]
            else:
                self._expected[key] = n - 1
            return True

    def check(self) -> str | None:
        """A line naming the first interface deleted from outside since the last call, or None."""
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(4))
            except BlockingIOError:
                return None
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                if not self.lost_events:  # a burst overflowed even 16 MB: said once, never a false stop
                    log.warning("interface events lost (socket buffer full): a deletion among them goes unseen")
                self.lost_events = True
                continue
            nsid = next((struct.unpack_from("=i", d)[0] for lvl, typ, d in anc
                         if lvl == _SOL_NETLINK and typ == _NETLINK_LISTEN_ALL_NSID), None)
            if nsid not in self.node_of:
                continue
            off = 0
            while off + _HDR.size <= len(data):
                length, typ = struct.unpack_from("=IH", data, off)
                if length < _HDR.size:
                    break
                if typ == _RTM_DELLINK:
                    attrs = self._attrs(data[off + _HDR.size + 16:off + length])  # after struct ifinfomsg
                    if _IFLA_NEW_NETNSID not in attrs:
                        name = attrs.get(_IFLA_IFNAME, b"?").rstrip(b"\0").decode(errors="replace")
                        if not self._announced(self.node_of[nsid], name):
                            return (f"interface {name} of {self.node_of[nsid]} was deleted from outside the "
                                    f"run: its link and routes are gone")
                off += (length + 3) & ~3

    @staticmethod
    def _attrs(buf: bytes) -> dict[int, bytes]:
        out, o = {}, 0
        while o + 4 <= len(buf):
            length, kind = struct.unpack_from("=HH", buf, o)
            if length < 4:
                break
            out[kind & 0x3FFF] = buf[o + 4:o + length]
            o += (length + 3) & ~3
        return out

    def close(self) -> None:
        self.sock.close()


def link_deletions(emu: Any, names: Sequence[str]) -> tuple[Check | None, LinkWatch | None]:
    """A check for interfaces deleted from outside the run (:class:`LinkWatch`) and the watch to close, or
    (None, None) where the kernel refuses one (logged: the run goes on without it)."""
    try:
        watch = LinkWatch({n: emu.node(n).ns_path for n in names})
    except OSError as e:
        log.warning("interfaces deleted from outside will not be noticed: %s", e)
        return None, None
    if hasattr(emu, "expect_deleted"):  # the emulation deletes and remakes spare pairs: it says which
        emu.expect_deleted = watch.expect
    return watch.check, watch


class Watchdog:
    """A thread running ``checks`` every ``interval_s`` until :meth:`stop`; the first that returns a line
    ends the watch and is handed to ``on_fault`` (once, from the watchdog's thread)."""

    def __init__(self, checks: Sequence[Check | None], on_fault: Callable[[str], None],
                 interval_s: float = 0.2) -> None:
        self.checks = [c for c in checks if c is not None]
        self.on_fault, self.interval_s = on_fault, interval_s
        self.fault: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="satnetem-watchdog", daemon=True)

    def start(self) -> None:
        if self.checks:
            self._thread.start()

    def stop(self) -> None:
        """End the watch (before the teardown: the parts it watches are about to end on purpose)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    def check_now(self) -> str | None:
        """Run the checks once, here: the first line, or None. After :meth:`stop`, for a caller whose
        own operation failed first (a step that wrote to a dead shard): the cause, in the same words."""
        for check in self.checks:
            try:
                line = check()
            except Exception as e:  # noqa: BLE001 - a check that cannot look is itself a fault
                line = f"watchdog check failed: {e}"
            if line:
                return line
        return None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            line = self.check_now()
            if line and not self._stop.is_set():
                self.fault = line
                log.debug("watchdog: %s", line)
                self.on_fault(line)
                return
