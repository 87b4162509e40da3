"""The routing protocol's route computation in a child process, so that a step only installs routes.

On 10,744 satellites a shortest-delay table took 250-450 ms of numpy and scipy (a Dijkstra run per
destination; the C trees of routing/dijkstra.c take ~0.6x that), and numpy's and scipy's parts hold the GIL
while they run: in the emulator's own process the computation of the next step would compete with the
installation of this one. :class:`RouteWorker` forks a child before
the emulation opens any namespace (the child holds no namespace, socket or shaper descriptor, and a
copy-on-write view of the timeline), sends it each snapshot to compute (a few hundred kB), and reads the
table back from a shared memory file (``memfd``) the child writes: 35 MB of table through a pipe took
~100 ms each way here, a copy out of shared memory takes a few.

Every computation of the emulation goes through the one child, in order, so a protocol that keeps
state between calls keeps it there; it must not expect to see changes the caller makes to shared
objects after the fork.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import mmap
import os
import pickle
import signal
import socket
import traceback
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any, NoReturn

import numpy as np

from routing.base import RouteTable
from topologies.errors import ApplyError
from topologies.timeline import Snapshot, Timeline

_PR_SET_PDEATHSIG = 1
_ALIGN = 64


def _die_with_parent() -> None:
    """The child gets SIGKILL when the process that forked it ends (even by SIGKILL)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - Linux has prctl
        pass


def _trim_heap() -> None:
    """Give the free pages of the C heap back to the kernel (glibc's ``malloc_trim(0)``; a no-op elsewhere)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


class RouteWorker:
    """A forked child computing ``protocol.compute(timeline, step, snapshot)`` on request.

    Use :meth:`submit` then :meth:`result`, one request at a time (:meth:`compute` does both).
    """

    def __init__(self, protocol: Any, timeline: Timeline) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._mm: mmap.mmap | None = None
        self._pending: int | None = None
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child (measured through the parent's tests)
            code = 0
            try:
                parent.close()
                _serve(Connection(child.detach()), protocol, timeline)
            except BaseException:  # noqa: BLE001 - the child must never return into the caller's code
                code = 1
            finally:
                os._exit(code)
        child.close()
        self.pid = pid
        self._conn: Connection | None = Connection(parent.detach())

    def submit(self, step: int, snap: Snapshot) -> None:
        """Start computing ``step``'s table on ``snap``."""
        if self._conn is None:
            raise ApplyError("the route worker is closed", operation="routes")
        if self._pending is not None:
            raise ApplyError("the route worker is busy", operation="routes")
        try:
            self._conn.send((step, snap.state, snap.peer, snap.params))
        except OSError as e:
            self._died(e)
        self._pending = step

    def _died(self, e: BaseException) -> NoReturn:
        pid = self.pid
        self._pending = None
        self.close()
        raise ApplyError(f"the route worker (pid {pid}) died: {e or 'end of stream'}", operation="routes") from None

    @property
    def busy(self) -> bool:
        """A request is under way (its result not read yet)."""
        return self._pending is not None

    def ready(self, timeout: float = 0.0) -> bool:
        """Whether the result of the pending request can be read without waiting (after up to
        ``timeout`` s)."""
        return self._conn is not None and self._pending is not None and self._conn.poll(max(timeout, 0.0))

    def result(self) -> RouteTable:
        """The table of the pending request (waits for it): arrays copied out of shared memory."""
        if self._conn is None or self._pending is None:
            raise ApplyError("no route computation is under way", operation="routes")
        try:
            kind, payload = self._conn.recv()
            if kind == "map":
                fd = recv_handle(self._conn)
                try:
                    if self._mm is not None:
                        self._mm.close()
                    self._mm = mmap.mmap(fd, payload, mmap.MAP_SHARED, mmap.PROT_READ)
                finally:
                    os.close(fd)
                kind, payload = self._conn.recv()
        except (EOFError, OSError) as e:
            self._died(e)
        self._pending = None
        if kind == "error":
            try:
                exc = pickle.loads(payload)
            except Exception:  # noqa: BLE001 - an exception class that does not unpickle
                exc = ApplyError("the routing protocol failed in the route worker", operation="routes")
            raise exc
        cls, fields = payload
        assert self._mm is not None
        values = {}
        for name, spec in fields.items():
            if spec[0] == "array":
                _, dtype, shape, offset = spec
                count = int(np.prod(shape, dtype=np.int64))
                values[name] = np.frombuffer(self._mm, np.dtype(dtype), count, offset).reshape(shape).copy()
            else:
                values[name] = spec[1]
        table: RouteTable = cls(**values)
        return table

    def compute(self, step: int, snap: Snapshot) -> RouteTable:
        """``protocol.compute(timeline, step, snap)`` in the child; waits for it."""
        self.submit(step, snap)
        return self.result()

    def discard(self) -> None:
        """Read and drop the pending result, if any (a snapshot that is no longer wanted)."""
        if self._pending is not None:
            try:
                self.result()
            except ApplyError:
                raise
            except Exception:  # noqa: BLE001 - the protocol's failure on a table nobody wants
                pass

    def close(self) -> None:
        """End the child and wait for it. Idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.send(None)
            except OSError:
                pass
            conn.close()
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = 0
        if self._mm is not None:
            self._mm.close()
            self._mm = None


def _serve(conn: Connection, protocol: Any, timeline: Timeline) -> None:  # pragma: no cover - child
    """The child's loop: compute each requested table into a memfd the parent maps."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and closes us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.closerange(3, conn.fileno())  # nothing of the parent's (sockets, namespace descriptors) stays open
    os.closerange(conn.fileno() + 1, 1 << 16)
    # Everything inherited stays out of this process's garbage collections: a collection writes to the header
    # of every object it scans, and each page written is copied out of the memory shared with the parent
    # (bench/soak.py: the runner and this child shared 614 MB, copied at ~8 MB/h over a 2 h run).
    gc.freeze()
    # The parent's free heap at the fork (what planning left) is mapped here too: each page of it the
    # parent reuses later is copied, and the original stays private to this child for good. Trimmed here,
    # the child no longer maps those pages and the parent reuses them in place.
    _trim_heap()
    fd = -1
    mm: mmap.mmap | None = None
    size = 0
    while True:
        try:
            req = conn.recv()
        except EOFError:
            return
        if req is None:
            return
        step, state, peer, params = req
        try:
            table = protocol.compute(timeline, step, Snapshot(step, state, peer, params))
            if not isinstance(table, RouteTable):
                raise TypeError(f"{type(protocol).__name__}.compute returned {type(table).__name__}, "
                                f"not a RouteTable")
        except BaseException as e:  # noqa: BLE001 - handed to the parent
            try:
                payload = pickle.dumps(e)
            except Exception:  # noqa: BLE001 - an exception that does not pickle
                payload = pickle.dumps(RuntimeError("".join(traceback.format_exception_only(type(e), e)).strip()))
            conn.send(("error", payload))
            continue
        fields: dict[str, Any] = {}
        arrays = []
        offset = 0
        for f in dataclasses.fields(table):
            v = getattr(table, f.name)
            if isinstance(v, np.ndarray):
                v = np.ascontiguousarray(v)
                fields[f.name] = ("array", v.dtype.str, v.shape, offset)
                arrays.append((offset, v))
                offset += -(-v.nbytes // _ALIGN) * _ALIGN
            else:
                fields[f.name] = ("value", v)
        if mm is None or offset > size:  # the first table maps even when it is empty (no destinations)
            if mm is not None:
                mm.close()
                os.close(fd)
            size = max(offset, 1)
            fd = os.memfd_create("satnetem-routes", os.MFD_CLOEXEC)
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            conn.send(("map", size))
            send_handle(conn, fd, os.getppid())
        assert mm is not None
        for off, v in arrays:
            dst = np.frombuffer(mm, np.uint8, v.nbytes, off)
            dst[:] = v.reshape(-1).view(np.uint8)
        conn.send(("table", (type(table), fields)))
