"""The order the spare remaker's threads take jobs in, and how it stops (emulator/spares.py).

The kernel side (delete, create, configure) is exercised live in tests/integration/test_network.py; here the
threads' remake of one job is replaced by one that records it and waits to be let go."""

from __future__ import annotations

import threading

import pytest

from emulator import rtnl
from emulator.spares import Remake, Remaker
from topologies.errors import ApplyError


def job(link: int) -> Remake:
    return Remake(link=link, pair=1, near=0, old=1, new=2, at=5, near_path="/nonexistent", near_name="gw",
                  new_path="/nonexistent", new_name="sat", gone=rtnl.Batch(), make_veth=lambda fd: b"",
                  make_what="veth", near_conf=rtnl.Batch(), far_conf=None, expect=[("gw", f"a{link}")])


class Recording(Remaker):
    """Takes jobs as the real one does; its remake records the link and waits for ``go``."""

    def __init__(self, threads: int = 1) -> None:
        self.order: list[int] = []
        self.started = threading.Event()
        self.go = threading.Event()
        self.seen: list[tuple[str, str]] = []
        super().__init__(threads=threads, expect=lambda node, ifname: self.seen.append((node, ifname)))

    def _remake(self, socks, job):  # noqa: ANN001 - the signature of the replaced method
        for node, ifname in job.expect:
            self.expect(node, ifname)
        self.order.append(job.link)
        self.started.set()
        assert self.go.wait(5)
        if job.link == 99:
            raise ApplyError("refused", operation="handover")


@pytest.fixture
def remaker():
    r = Recording()
    yield r
    r.go.set()
    r.close()


def test_urgent_and_hurried_jobs_go_first_then_in_order(remaker):
    first = job(0)
    remaker.submit(first)
    assert remaker.started.wait(5)  # the thread holds job 0 until go
    queued = [job(i) for i in range(1, 5)]
    for j in queued:
        remaker.submit(j)
    urgent = job(10)
    remaker.submit(urgent, urgent=True)
    remaker.hurry(queued[2])  # link 3: a step waits for it
    remaker.hurry(first)  # under way already: nothing changes
    assert remaker.queued() == 5
    remaker.go.set()
    for j in [first, urgent, *queued]:
        assert j.done.wait(5) and j.error is None
    assert remaker.order == [0, 3, 10, 1, 2, 4]  # the urgent ones in the order they were first submitted
    assert remaker.seen == [("gw", f"a{i}") for i in remaker.order]  # said before each job's requests


def test_a_failed_job_carries_its_error_and_the_next_ones_still_run(remaker):
    bad, good = job(99), job(1)
    remaker.submit(bad)
    remaker.submit(good)
    remaker.go.set()
    assert bad.done.wait(5) and good.done.wait(5)
    assert isinstance(bad.error, ApplyError) and "refused" in str(bad.error)
    assert good.error is None


def test_close_drops_the_queued_jobs_with_an_error_and_refuses_new_ones(remaker):
    running = job(0)
    remaker.submit(running)
    assert remaker.started.wait(5)
    left = [job(i) for i in range(1, 4)]
    for j in left:
        remaker.submit(j)
    remaker.go.set()
    remaker.close()
    assert running.done.is_set() and running.error is None  # the one under way finished
    for j in left:
        assert j.done.is_set() and isinstance(j.error, ApplyError) and "stopped" in str(j.error)
    assert remaker.order == [0]
    with pytest.raises(ApplyError, match="stopping"):
        remaker.submit(job(5))
    assert not any(t.is_alive() for t in remaker._threads)
