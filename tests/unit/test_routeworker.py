"""The route worker (emulator/routeworker.py): a forked child gives the tables the protocol gives in this
process, passes the protocol's errors on, keeps none of the parent's descriptors, and ends with close()."""

from __future__ import annotations

import gc
import os
import tempfile

import numpy as np
import pytest
from handmade import grid_timeline

from emulator.routeworker import RouteWorker
from routing.base import RouteTable, get_protocol
from topologies.errors import ApplyError, ConfigError


@pytest.mark.parametrize("name", ["shortest-delay", "min-hop", "ecmp", "predictive"])
def test_tables_from_the_child_equal_the_protocols_own(name):
    tl = grid_timeline()
    w = RouteWorker(get_protocol(name), tl)
    try:
        for step in range(tl.n_steps):
            snap = tl.snapshot(step)
            want = get_protocol(name).compute(tl, step, snap)
            got = w.compute(step, snap)
            assert type(got) is type(want)
            for f in ("destinations", "next_hop", "link", "dist", "mp_next_hop", "mp_link"):
                a, b = getattr(got, f), getattr(want, f)
                assert (a is None) == (b is None), f
                if a is not None:
                    assert a.dtype == b.dtype and np.array_equal(a, b), f
    finally:
        w.close()


class _NoDestinations:
    """A protocol whose table routes to nothing (a constellation without ground nodes and too many
    satellites for routes to every loopback): every array of the table is empty."""

    def compute(self, timeline, step, snapshot):
        n = len(timeline.nodes)
        return RouteTable(step, np.zeros(0, np.int64), np.zeros((0, n), np.int32), np.zeros((0, n), np.int32),
                          np.zeros((0, n), np.float64))


def test_an_empty_table_comes_back_empty():
    """The child once mapped no shared memory for a table of zero bytes and died; the emulation of a shell
    without ground nodes (no destinations) failed to build with 'the route worker died'."""
    tl = grid_timeline()
    w = RouteWorker(_NoDestinations(), tl)
    try:
        for step in range(2):
            got = w.compute(step, tl.snapshot(step))
            assert got.next_hop.shape == (0, len(tl.nodes)) and got.step == step
    finally:
        w.close()


class _Collects:
    """A protocol that runs a full garbage collection in the child, then reports the child's private dirty
    memory (from the kernel: /proc/self/smaps_rollup) in the table's step field."""

    def compute(self, timeline, step, snapshot):
        gc.collect()
        with open("/proc/self/smaps_rollup") as f:
            kb = sum(int(line.split()[1]) for line in f if line.startswith("Private_Dirty:"))
        n = len(timeline.nodes)
        return RouteTable(kb, np.zeros(0, np.int64), np.zeros((0, n), np.int32), np.zeros((0, n), np.int32),
                          np.zeros((0, n), np.float64))


def test_the_childs_collections_leave_the_parents_objects_shared():
    """Objects the parent had at the fork stay shared with the child: the child's garbage collections do
    not scan them (a scan writes to each object's header, and every page written is copied). 400,000 small
    containers (~60 MB) in the parent; the child's private memory grows by well under their size across
    full collections (it grew by their size, ~60 MB, when the child collected them)."""
    ballast = [{"k": [i]} for i in range(400_000)]
    tl = grid_timeline()
    w = RouteWorker(_Collects(), tl)
    try:
        first = w.compute(0, tl.snapshot(0)).step
        last = max(w.compute(0, tl.snapshot(0)).step for _ in range(3))
        assert last - first < 8_000, (first, last)  # kB
        assert first < 30_000, first
    finally:
        w.close()
        del ballast


def test_a_changed_snapshot_is_computed_on_not_the_timelines():
    """The child computes on the snapshot it is sent (a failure applied by the caller), not on its own copy."""
    tl = grid_timeline()
    snap = tl.snapshot(0)
    cut = snap.state.copy()
    up = np.flatnonzero(cut == 0)
    cut[up[0]] = 5  # any reason other than up
    failed = type(snap)(0, cut, snap.peer, snap.params)
    w = RouteWorker(get_protocol("shortest-delay"), tl)
    try:
        got = w.compute(0, failed)
    finally:
        w.close()
    want = get_protocol("shortest-delay").compute(tl, 0, failed)
    assert np.array_equal(got.next_hop, want.next_hop)
    assert not np.array_equal(want.link, get_protocol("shortest-delay").compute(tl, 0, snap).link)


class _Broken:
    name = "broken"

    def compute(self, timeline, step, snapshot=None) -> RouteTable:
        raise ConfigError("broken on purpose", key="routing.protocol")


class _NotATable:
    name = "not-a-table"

    def compute(self, timeline, step, snapshot=None):
        return {"step": step}


def test_protocol_errors_reach_the_caller_and_the_worker_goes_on():
    tl = grid_timeline()
    w = RouteWorker(_Broken(), tl)
    try:
        with pytest.raises(ConfigError, match="broken on purpose"):
            w.compute(0, tl.snapshot(0))
        with pytest.raises(ConfigError):  # still serving
            w.compute(1, tl.snapshot(1))
    finally:
        w.close()
    w = RouteWorker(_NotATable(), tl)
    try:
        with pytest.raises(TypeError, match="not a RouteTable"):
            w.compute(0, tl.snapshot(0))
    finally:
        w.close()


def test_the_child_holds_no_descriptor_of_the_parent_and_ends_with_close():
    tl = grid_timeline()
    with tempfile.TemporaryFile() as f:
        w = RouteWorker(get_protocol("shortest-delay"), tl)
        pid = w.pid
        try:
            w.compute(0, tl.snapshot(0))  # the child has run its set-up by the time it answers
            theirs = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
            assert os.readlink(f"/proc/self/fd/{f.fileno()}") not in theirs
            # stdin/out/err, its end of the socket pair and the shared table
            assert len(theirs) <= 5, theirs
        finally:
            w.close()
    assert not os.path.exists(f"/proc/{pid}")
    with pytest.raises(ApplyError, match="closed"):
        w.submit(0, tl.snapshot(0))


def test_a_killed_worker_is_a_one_line_error():
    tl = grid_timeline()
    w = RouteWorker(get_protocol("shortest-delay"), tl)
    try:
        os.kill(w.pid, 9)
        with pytest.raises(ApplyError, match="route worker .* died"):
            w.compute(0, tl.snapshot(0))
    finally:
        w.close()


def _private_dirty_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f if line.startswith("Private_Dirty:"))


def test_the_parent_reusing_its_free_heap_costs_the_child_nothing():
    """The heap the parent had freed before the fork (planning leaves ~60 MB of it in the default scenario)
    is not kept by the child: when the parent reuses it, the child's private memory does not grow by it.
    Kept, each page the parent rewrote stayed private to the child for good (the soak's route worker grew
    ~2.8 MB/h so). Here the parent frees 32 MB of heap before the fork and rewrites it after."""
    import ctypes

    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    n, size = 1000, 32 * 1024  # below glibc's mmap threshold: from the heap
    chunks = [libc.malloc(size) for _ in range(n)]
    top = libc.malloc(size)  # above them: freeing them cannot shrink the heap
    for c in chunks:
        ctypes.memset(c, 1, size)
    for c in chunks:
        libc.free(c)
    tl = grid_timeline()
    w = RouteWorker(get_protocol("shortest-delay"), tl)
    try:
        w.compute(0, tl.snapshot(0))
        before = _private_dirty_kb(w.pid)
        chunks = [libc.malloc(size) for _ in range(n)]
        for c in chunks:
            ctypes.memset(c, 2, size)
        w.compute(1, tl.snapshot(1))
        grown_kb = _private_dirty_kb(w.pid) - before
    finally:
        w.close()
        for c in chunks:
            libc.free(c)
        libc.free(top)
    assert grown_kb < 8 * 1024, f"the child's private memory grew {grown_kb} kB as the parent rewrote 32 MB"
