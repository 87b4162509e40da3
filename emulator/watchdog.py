"""Stop a run whose delays or routes can no longer be guaranteed, instead of letting it go on silently.

A run depends on processes it started and cannot replace in the middle: the delay daemon's shards (each
holds the packets of its namespaces and applies their links' delays) and the namespace holder (its bind
mounts keep the nodes' namespaces alive). If one dies, whether killed from outside or crashed, packets
are no longer delayed as the timeline says, or nodes vanish; a step may only notice it much later (the
next change on one of the shard's links) or never. :class:`Watchdog` checks them every ``interval_s``
(0.2 s: a dead part is noticed well within the 2 s a run has to stop) and calls ``on_fault`` once with
one line saying what died; the runner then stops the clock, tears down and marks the run incomplete.

A check is a callable returning None while all is well, else the line. The checks read ``/proc`` or a
child's exit status (``Popen.poll``), or drain one netlink socket (:class:`LinkWatch`: an interface of a
node deleted from outside the run): microseconds each, whatever the constellation's size.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Sequence
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
    set NAME auto`` does). The run itself never deletes an interface while it plays: it moves spares between
    namespaces, and the kernel marks such a removal with the namespace it went to (``IFLA_NEW_NETNSID``).
    A removal without that mark, in one of the run's namespaces, is someone else's. One descriptor whatever
    the constellation's size; the build pays two netlink round trips per namespace.
    """

    def __init__(self, ns_paths: dict[str, str], rcvbuf_bytes: int = 16 << 20) -> None:
        self.node_of: dict[int, str] = {}
        self.lost_events = False
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
                        return (f"interface {name} of {self.node_of[nsid]} was deleted from outside the run: "
                                f"its link and routes are gone")
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
