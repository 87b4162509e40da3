"""Latency probes run at real-time priority where the userspace shaper holds packets on arrival.

There the kernel's receive time stamp of a held packet is cleared, so ping and the UDP probe are stamped
when they read it, and a probe waiting for a CPU would count the wait as delay. The test reads the
probes' scheduling policy and priority from the kernel (``/proc/<pid>/stat``), and the delay daemon's own
priority the same way, and compares the two."""

from __future__ import annotations

import os
import time

import pytest

from topologies.scenario import parse_scenario

pytestmark = pytest.mark.root

SCENARIO = """
name = "probe-priority"
[time]
start = "2023-07-18T12:00:00Z"
duration_s = 4
step_s = 1.0
[[constellation.shells]]
name = "shell"
planes = 12
sats_per_plane = 12
[gsl]
min_elevation_deg = 10.0
[[ground.sites]]
name = "gs-london"
lat_deg = 51.5074
lon_deg = -0.1278
[[ground.sites]]
name = "gs-new-york"
lat_deg = 40.7128
lon_deg = -74.0060
[[traffic]]
kind = "ping"
src = "gs-london"
dst = "gs-new-york"
rate_pps = 5
[[traffic]]
kind = "udp-probe"
src = "gs-new-york"
dst = "gs-london"
rate_pps = 5
"""
SCHED_FIFO = 1


def _policy(pid: int) -> tuple[int, int, str]:
    """(policy, real-time priority, command name) of a process, as the kernel reports them."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()  # fields from the 3rd (state) on
    return int(fields[41 - 3]), int(fields[40 - 3]), comm  # policy, rt_priority (proc(5))


def _daemon_policies() -> list[tuple[int, int, str]]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if not f.read().startswith(b"emulator.shaping.delayd"):
                        continue
                out.append(_policy(int(d)))
            except (OSError, ValueError):
                pass
    return out


def test_probes_run_below_the_delay_daemon_at_real_time_priority(tmp_path):
    from emulator.api import open_emulation
    from emulator.flows import FlowStarter

    sc = parse_scenario(SCENARIO, "<test>")
    with open_emulation(sc, protocol="shortest-delay", run_id=f"t-probeprio-{os.getpid()}") as emu:
        emu.goto(0)
        e = emu.emulation
        starter = FlowStarter(e, tmp_path, 1.0)
        try:
            flows = [starter.start(i, t, 3.0) for i, t in enumerate(sc.traffic)]
            time.sleep(0.5)  # the UDP probe's receiver starts first, its sender 0.2 s later
            probes = [_policy(p.pid) for fl in flows for p in fl.procs if p.poll() is None]
        finally:
            starter.stop_all()
        daemons = _daemon_policies()
    assert len(probes) == 3, probes  # ping; the UDP probe's sender and receiver
    if e.shaper.name != "userspace":  # netem stamps arrivals in the kernel: probes stay as they are
        assert all(pol != SCHED_FIFO for pol, _, _ in probes), probes
        return
    assert daemons and all(pol == SCHED_FIFO for pol, _, _ in daemons), daemons
    daemon_prio = min(prio for _, prio, _ in daemons)
    assert {comm for _, _, comm in probes} >= {"ping"}, probes
    for pol, prio, comm in probes:
        assert pol == SCHED_FIFO and 1 <= prio < daemon_prio, (comm, pol, prio, daemon_prio)
