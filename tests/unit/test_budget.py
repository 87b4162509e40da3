"""What a run needs from the machine (emulator.kernel.budget) and the rtnetlink socket budget: pure
arithmetic, checked against hand-computed cases; no root."""

from __future__ import annotations

import pytest

from emulator.kernel import budget
from emulator.rtnl import FDS_RESERVED, MIN_SOCKETS, socket_budget
from topologies.errors import ConfigError

ROOMY = budget.Limits(nofile_hard=1 << 20, ptys_free=4096, mem_available_mb=1e9)


def test_socket_budget_leaves_a_reserve_and_never_drops_below_the_minimum():
    assert socket_budget(4096) == 4096 - 512
    assert socket_budget(20_000) == 20_000 - 2_500  # an eighth when that is more than the fixed reserve
    assert socket_budget(100) == MIN_SOCKETS


def test_needs_of_the_2019_shells_and_the_2026_set():
    # 4,408 satellites + 100 gateways + 2 hosts; a veth pair per link slot and a spare per antenna
    n = budget.needs(4510, 9000 + 100 + 100 + 2, "userspace", nofile=20_000, cores=2)
    # the holder, the route worker and a delay daemon shard per core, nothing per node
    assert n.processes == 4 and n.ptys == 0
    assert n.fds_min == FDS_RESERVED + MIN_SOCKETS
    assert socket_budget(n.fds_all_open) >= 4510 > socket_budget(n.fds_all_open - 1)
    assert n.shaper_fds == 2255 + 32  # a queue socket per namespace, spread over the two shards
    assert n.kernel_mb == pytest.approx((4510 * 400 + 9202 * 160) / 1024)
    # all 10,744 satellites under 4,096 open files: the daemon needs a third shard, each under the limit
    big = budget.needs(10_744, 30_000, "userspace", nofile=4096, cores=2)
    assert big.processes == 2 + 3 and big.shaper_fds <= 4096
    assert budget.needs(10_744, 30_000, "netem", nofile=4096).processes == 2
    assert budget.needs(10_744, 30_000, "netem", nofile=4096, route_worker=False).processes == 1  # daemons


@pytest.mark.parametrize("limits, key", [
    (budget.Limits(nofile_hard=400, ptys_free=4096, mem_available_mb=1e9), "open-file limit of at least 528"),
    (budget.Limits(nofile_hard=1 << 20, ptys_free=4096, mem_available_mb=100.0), "kernel memory"),
    (budget.Limits(nofile_hard=1 << 20, ptys_free=4096, mem_available_mb=1e9, netns_max=4000), "4010 network"),
    (budget.Limits(nofile_hard=1 << 20, ptys_free=4096, mem_available_mb=1e9, mounts_max=4100), "4266 mounts"),
])
def test_check_refuses_in_one_line(limits, key):
    n = budget.needs(4010, 8000, "userspace", nofile=limits.nofile_hard, cores=2)
    with pytest.raises(ConfigError) as e:
        budget.check(n, limits)
    assert key in str(e.value) and "\n" not in str(e.value)
    budget.check(n, ROOMY)  # and passes where the machine has room
    budget.check(budget.needs(4010, 8000, "userspace", nofile=4096, cores=2), budget.Limits(4096, 0, 1e9))


def test_describe_names_every_figure():
    line = budget.needs(100, 250, "userspace", nofile=4096, cores=2).describe()
    for part in ("4 processes", "0 ptys", "open-file limit >= 528", "100 namespaces", "250 veth pairs"):
        assert part in line, line
