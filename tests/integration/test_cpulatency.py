"""The CPU latency request an emulation holds while it runs (emulator.kernel.cpulatency), read back from the
kernel: reading /dev/cpu_dma_latency gives the strictest request in force, whoever made it."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time

import pytest
from handmade import grid_timeline

pytestmark = pytest.mark.root
DEVICE = "/dev/cpu_dma_latency"


def in_force_us() -> int:
    with open(DEVICE, "rb") as f:
        return struct.unpack("=i", f.read(4))[0]


@pytest.fixture
def baseline():
    if not os.path.exists(DEVICE):
        pytest.skip(f"{DEVICE} is missing (kernel without PM QoS)")
    b = in_force_us()
    if b == 0:
        pytest.skip(f"something else holds {DEVICE} at 0 us: a request of ours could not be told apart")
    return b


def test_held_at_zero_from_build_to_stop(make_emulation, baseline):
    emu = make_emulation(grid_timeline())
    assert emu.cpu_hold is not None and emu.cpu_hold.held
    assert in_force_us() == 0
    emu.stop()
    assert in_force_us() == baseline


def test_not_held_when_the_scenario_says_so(baseline):
    from emulator.network import Emulation
    from tests.integration.conftest import NullShaper

    emu = Emulation(grid_timeline(), NullShaper(), "shortest-delay")
    emu.keep_cpus_awake = False
    try:
        emu.build()
        assert emu.cpu_hold is None and in_force_us() == baseline
    finally:
        emu.stop()


def test_the_kernel_withdraws_it_when_the_holder_is_killed(baseline):
    code = ("import sys, time\nfrom emulator.kernel.cpulatency import CpuLatencyHold\n"
            "assert CpuLatencyHold(0).hold()\nprint('held', flush=True)\ntime.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    try:
        assert p.stdout.readline().strip() == "held"
        assert in_force_us() == 0
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
        deadline = time.monotonic() + 5
        while in_force_us() != baseline and time.monotonic() < deadline:
            time.sleep(0.05)
        assert in_force_us() == baseline
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_bad_latency_is_refused():
    from emulator.kernel.cpulatency import CpuLatencyHold

    for bad in (-1, 1.5, True, "0"):
        with pytest.raises(ValueError, match="latency_us"):
            CpuLatencyHold(bad)


def test_the_delay_daemon_holds_it_while_it_runs_without_an_emulation(baseline):
    """The shaper alone (as the shaping tests and a cluster agent use it): the request is in force once its
    daemon's first shard has started, and gone when it closes; not made with keep_cpus_awake off."""
    from vethchain import routed_line

    from emulator.shaping.userspace import UserspaceShaper

    with routed_line("dcl", 1, "10.84") as (c, _, _):
        for keep, want in ((True, 0), (False, baseline)):
            sh = UserspaceShaper(keep_cpus_awake=keep)
            try:
                for n, ipr in c.iprs.items():
                    sh.prepare_node(n, c.path(n), ipr)
                assert sh._daemon.pids and in_force_us() == want, keep
            finally:
                sh.close()
            assert in_force_us() == baseline


def test_the_environment_switch_turns_every_holder_off(baseline, monkeypatch):
    from emulator.kernel.cpulatency import KEEP_AWAKE_ENV, CpuLatencyHold

    monkeypatch.setenv(KEEP_AWAKE_ENV, "0")
    h = CpuLatencyHold(0)
    assert not h.hold() and KEEP_AWAKE_ENV in h.why_not and in_force_us() == baseline
    monkeypatch.setenv(KEEP_AWAKE_ENV, "1")
    assert h.hold() and in_force_us() == 0
    h.release()
    assert in_force_us() == baseline
