"""Spare veth pairs remade at their next satellite by worker threads, away from the step's thread.

An antenna's spare pair waits at the satellite its antenna takes next. Moving the far end there
(``IFLA_NET_NS_FD``, dev_change_net_namespace) makes the kernel wait for an RCU barrier while it holds
the rtnl lock: 15-30 ms a move on the dev machine, during which every other rtnetlink request of the
host waits too. Deleting the pair and creating it again at the next satellite holds the lock ~1 ms; the
deletion's wait for the barrier comes after the kernel released it (netdev_run_todo), and is spent here,
in a worker thread, while the step's thread goes on sending routes. ``bench/bench_spares.py``: a route
replace in another namespace took 31.5 ms at the median beside a stream of moves, 0.029 ms beside a
stream of remakes (0.020 ms beside nothing).

A remade pair has the names, indices, addresses and interface groups the moved one would have; its ends
are configured and left down, as a moved end was. The caller (:class:`emulator.network.Emulation`)
forgets the old pair before it hands a job over and records the new one once the job is done.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from topologies.errors import ApplyError

from . import rtnl

#: worker threads. Each spends most of a job asleep in the deletion's RCU barrier, and concurrent barriers
#: share grace periods: 80 pairs deleted on the dev machine took 16.2-16.6 ms each on one thread, 8.2-8.4 on
#: two, 5.4-6.5 on four (creating one: 0.7-1.7 ms)
THREADS = 3


@dataclass
class Remake:
    """One spare pair to delete where it is and create again at ``new`` (node indices of the emulation)."""

    link: int
    pair: int
    near: int  # the node holding the pair's near end (it stays there)
    old: int  # the node holding the far end now (``near`` while parked)
    new: int  # the node that will hold it (``near``: parked)
    at: int  # the timeline step the pair is wanted for (-1: at once, by the step being applied)
    near_path: str
    near_name: str
    new_path: str
    gone: rtnl.Batch  # the deletion, sent in the near namespace
    make_veth: Callable[[int], bytes]  # RTM_NEWLINK body of the new pair, given the new namespace's descriptor
    make_what: str
    near_conf: rtnl.Batch  # configuration of the near end (sent in the near namespace)
    far_conf: rtnl.Batch | None  # of the far end (in the new namespace; None: parked, left unaddressed)
    new_name: str
    expect: list[tuple[str, str]] = field(default_factory=list)  # (node, interface) the deletion removes
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    kernel_ms: float = 0.0  # wall time of the job's requests, ms


def remake_job(link: int, pair: int, at: int, near: tuple[int, str, str], old: tuple[int, str],
               new: tuple[int, str, str], ends: tuple[tuple[str, int, int], tuple[str, int, int]], prefix_len: int,
               forwarding: tuple[bool, bool], groups: tuple[int, int]) -> Remake:
    """The job that remakes one pair: ``near`` and ``new`` are (node index, name, namespace path) of the node
    keeping the near end and of the one the far end goes to (``near``'s: parked, left unaddressed), ``old``
    (node index, name) of the one holding the far end now; ``ends`` the (name, ifindex, IPv4 address) of the
    near and far ends; ``forwarding`` IPv4 forwarding on each end; ``groups`` their interface groups."""
    (name0, index0, addr0), (name1, index1, addr1) = ends
    gone = rtnl.Batch()
    gone.add(rtnl.RTM_DELLINK, 0, rtnl.link_set_body(index0),
             f"delete {name0} of {near[1]} (its peer {name1} of {old[1]} with it)")

    def make_veth(fd: int) -> bytes:
        return rtnl.veth_body(name0, index0, None, name1, index1, fd, *groups)

    near_conf = rtnl.Batch()
    near_conf.add_end_conf(name0, index0, addr0, prefix_len, forwarding[0])
    far_conf = None
    if new[0] != near[0]:
        far_conf = rtnl.Batch()
        far_conf.add_end_conf(name1, index1, addr1, prefix_len, forwarding[1])
    return Remake(link=link, pair=pair, near=near[0], old=old[0], new=new[0], at=at, near_path=near[2],
                  near_name=near[1], new_path=new[2], new_name=new[1], gone=gone, make_veth=make_veth,
                  make_what=f"veth {near[1]}:{name0} -- {new[1]}:{name1}", near_conf=near_conf, far_conf=far_conf,
                  expect=[(near[1], name0), (old[1], name1)])


class Remaker:
    """Worker threads that remake spare pairs (:class:`Remake`), urgent jobs (a step waiting) first.

    Each thread has sockets of its own in the namespaces it works in (:class:`emulator.rtnl.PrivateSockets`,
    at most ``sockets`` open), so its requests never wait for, nor hold up, the step's. ``expect`` is told
    each interface a deletion will remove, before it is sent (the run's watch for interfaces deleted from
    outside, :class:`emulator.watchdog.LinkWatch`).
    """

    def __init__(self, threads: int = THREADS, expect: Callable[[str, str], None] | None = None,
                 sockets: int = 32) -> None:
        self.expect = expect
        self._cond = threading.Condition()
        self._queue: list[tuple[int, int, Remake]] = []
        self._seq = itertools.count()
        self._closed = False
        self._sockets = sockets
        self._threads = [threading.Thread(target=self._work, name=f"satnetem-spares-{i}", daemon=True)
                         for i in range(max(1, threads))]
        for t in self._threads:
            t.start()

    def submit(self, job: Remake, urgent: bool = False) -> None:
        with self._cond:
            if self._closed:
                raise ApplyError("the emulation is stopping", operation="handover")
            heapq.heappush(self._queue, (0 if urgent else 1, next(self._seq), job))
            self._cond.notify()

    def hurry(self, job: Remake) -> None:
        """Put a queued job first (a step waits for it); nothing if a thread has it already."""
        with self._cond:
            for i, (prio, seq, j) in enumerate(self._queue):
                if j is job and prio:
                    self._queue[i] = (0, seq, j)
                    heapq.heapify(self._queue)
                    break

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self, timeout_s: float = 5.0) -> None:
        """Drop the queued jobs (each marked done with an error) and wait for those under way. Idempotent."""
        with self._cond:
            self._closed = True
            dropped = [j for _p, _s, j in self._queue]
            self._queue.clear()
            self._cond.notify_all()
        for j in dropped:
            j.error = ApplyError("the emulation stopped before the spare was remade", operation="handover")
            j.done.set()
        end = time.monotonic() + timeout_s
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(max(0.0, end - time.monotonic()))

    def _work(self) -> None:
        from .clock import normal_priority

        normal_priority()  # started from the clock's thread, which may play at SCHED_FIFO
        socks = rtnl.PrivateSockets(self._sockets)
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    _p, _s, job = heapq.heappop(self._queue)
                t = time.perf_counter()
                try:
                    self._remake(socks, job)
                except BaseException as e:  # noqa: BLE001 - handed to the emulation when it collects the job
                    job.error = e
                job.kernel_ms = (time.perf_counter() - t) * 1e3
                job.done.set()
        finally:
            socks.close()

    def _remake(self, socks: rtnl.PrivateSockets, job: Remake) -> None:
        if self.expect is not None:
            for node, ifname in job.expect:
                self.expect(node, ifname)
        near = socks.get(job.near_path, job.near_name)
        near.check(job.gone, "handover")
        try:
            fd = os.open(job.new_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise ApplyError(f"cannot open namespace: {e.strerror}", node=job.new_name,
                             operation="open netns") from None
        try:
            b = rtnl.Batch()
            b.add(rtnl.RTM_NEWLINK, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL, job.make_veth(fd), job.make_what)
            near.check(b, "handover")
        finally:
            os.close(fd)
        near.check(job.near_conf, "handover")
        if job.far_conf is not None:
            socks.get(job.new_path, job.new_name).check(job.far_conf, "handover")
