"""Cgroup layout detection and CPU quota arithmetic (emulator.kernel.cgroups), on hand-written mount tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator.kernel.cgroups import MIN_CPU_SHARE, PERIOD_US, detect, quota_us
from topologies.errors import ApplyError, ConfigError

# this machine's: v1 hierarchies per controller, the process in a memory group of its own
V1_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V1_SELF = "4:memory:/process_api/abc\n1:cpu:/\n0::/\n"


def test_v1_groups_sit_under_the_process_own_groups():
    lay = detect(V1_MOUNTS, V1_SELF)
    assert lay.version == "v1"
    assert lay.cpu_dir == Path("/sys/fs/cgroup/cpu")
    assert lay.memory_dir == Path("/sys/fs/cgroup/memory/process_api/abc")
    assert "cfs_quota_us" in lay.describe() and "limit_in_bytes" in lay.describe()


def test_v2_chosen_when_the_unified_hierarchy_has_cpu_and_memory(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    mounts = f"30 23 0:26 / {tmp_path} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    lay = detect(mounts, "0::/user.slice/session-1.scope\n")
    assert lay.version == "v2"
    # at the hierarchy's root: the session's scope holds our process, so it cannot give its children controllers
    assert lay.cpu_dir == lay.memory_dir == tmp_path
    # without the memory controller there: no layout (no v1 hierarchies either)
    (tmp_path / "cgroup.controllers").write_text("cpu pids\n")
    with pytest.raises(ApplyError, match="cpu and memory"):
        detect(mounts, "0::/\n")


def test_hybrid_with_an_empty_unified_hierarchy_is_v1(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("")
    mounts = V1_MOUNTS.replace("/sys/fs/cgroup/unified", str(tmp_path))
    assert detect(mounts, V1_SELF).version == "v1"


@pytest.mark.parametrize("share", [MIN_CPU_SHARE, 0.25, 0.5, 1.0, 3.0])
def test_quota_is_the_share_of_the_period(share):
    assert quota_us(share) == round(share * PERIOD_US)
    assert quota_us(share) >= 1000  # the kernel's least CFS quota


@pytest.mark.parametrize("bad", [0.0, -1.0, MIN_CPU_SHARE / 2, float("nan"), float("inf")])
def test_quota_rejects_shares_the_kernel_cannot_hold(bad):
    with pytest.raises(ConfigError, match="cpu_share"):
        quota_us(bad)


_SCENARIO = """name = "cap"
[time]
start = "2024-03-01T00:00:00Z"
duration_s = 2
[[constellation.shells]]
name = "s"
planes = 4
sats_per_plane = 4
[[ground.sites]]
name = "gs-a"
lat_deg = 0.0
lon_deg = 0.0
[[compute]]
name = "dc-a"
satellite = "sat-0-0"
"""


@pytest.mark.parametrize("line,value", [("cpu_share", "0.01"), ("cpu_share", "nan"), ("cpu_share", "true"),
                                        ("memory_mb", "0.5"), ("memory_mb", "inf"), ("cpu_share", '"half"')])
def test_bad_capacity_names_key_and_line(line, value):
    from topologies.scenario import parse_scenario

    with pytest.raises(ConfigError) as e:
        parse_scenario(_SCENARIO + f"{line} = {value}\n", "cap.toml")
    msg = str(e.value)
    assert f"cap.toml:16, key 'compute[0].{line}'" in msg, msg


def test_capacity_reaches_the_timeline_node():
    from topologies.plan import plan_scenario
    from topologies.scenario import parse_scenario

    tl = plan_scenario(parse_scenario(_SCENARIO + "cpu_share = 0.25\nmemory_mb = 48\n", "cap.toml"))
    info = tl.nodes[tl.node_index("dc-a")].info
    assert info["cpu_share"] == 0.25 and info["memory_mb"] == 48
