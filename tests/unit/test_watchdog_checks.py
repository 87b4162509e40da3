"""The watchdog's checks on traffic programs (emulator.watchdog.traffic_alive), on real processes: one
killed by a signal is a fault naming the program and its flow; one that exits on its own with an error
before its flow's end is said once and is no fault; one still running, ending at its flow's end or with
status 0 is neither."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from emulator.flows import Flow, FlowRecord
from emulator.watchdog import _program, results_space, traffic_alive


class Starter:
    def __init__(self) -> None:
        self.flows: list[Flow] = []


def _flow(label: str, argv: list[str], duration_s: float = 60.0) -> Flow:
    rec = FlowRecord(label=label, kind="ping", src="a", dst="b", start_unix_s=time.time(), duration_s=duration_s,
                     rate_pps=5.0)
    return Flow(rec, procs=[subprocess.Popen(argv)])


def test_the_program_is_named_through_the_node_wrappers():
    wrap = ["setsid", "nsenter", "--net=/run/satnetem-netns/h-a", "--"]
    assert _program(wrap + ["stdbuf", "-oL", "ping", "-D", "-n", "10.0.0.1"]) == "ping"
    assert _program(wrap + [sys.executable, "-m", "emulator.traffic.udpprobe", "send"]) == "udpprobe"
    assert _program(wrap + ["iperf3", "-c", "10.0.0.1"]) == "iperf3"


def test_a_killed_program_is_a_fault_and_an_early_exit_a_note():
    starter, notes = Starter(), []
    check = traffic_alive(starter, notes.append)
    assert check is not None
    running = _flow("ping:a--b", ["sleep", "30"])
    early = _flow("udp-probe:a--b", [sys.executable, "-c", "raise SystemExit(3)"])
    starter.flows += [running, early]
    try:
        early.procs[0].wait(timeout=30)
        assert check() is None  # exited on its own: said, not a fault
        assert len(notes) == 1 and "udp-probe:a--b" in notes[0] and "status 3" in notes[0], notes
        assert check() is None and len(notes) == 1  # said once
        victim = _flow("iperf3-udp:a--b", ["sleep", "30"])
        starter.flows.append(victim)  # a flow started later (start_s > 0) is watched too
        assert check() is None
        victim.procs[0].send_signal(signal.SIGKILL)
        victim.procs[0].wait(timeout=10)
        line = check()
        assert line is not None and "iperf3-udp:a--b" in line and f"pid {victim.procs[0].pid}" in line
        assert "SIGKILL" in line and "sleep" in line
    finally:
        for fl in starter.flows:
            for p in fl.procs:
                p.kill()
                p.wait()


def test_an_exit_at_the_flow_end_or_with_status_0_is_not_said(tmp_path: Path):
    starter, notes = Starter(), []
    check = traffic_alive(starter, notes.append)
    assert check is not None
    at_end = _flow("ping:a--b", [sys.executable, "-c", "raise SystemExit(1)"], duration_s=0.5)
    done = _flow("allreduce:a", ["true"], duration_s=60.0)  # done with its work before the run's end
    starter.flows += [at_end, done]
    for fl in starter.flows:
        fl.procs[0].wait(timeout=30)
    time.sleep(max(0.0, at_end.record.start_unix_s + 0.5 - time.time()))
    assert check() is None and notes == [], notes


def test_the_results_space_check_trips_below_its_floor(tmp_path: Path):
    import os

    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    assert results_space(tmp_path, min_free_bytes=max(1, free // 2))() is None
    line = results_space(tmp_path, min_free_bytes=free + (1 << 30))()
    assert line is not None and str(tmp_path) in line and "kB free" in line
