"""Play steps in real time under a routing daemon while h-a pings h-b every 20 ms, for the OSPF live tests
(handover, restore): converge first, let the LSAs of convergence fall MinLSInterval behind, then play, then
wait until h-b answers again (the whole outage counted) and a second more."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from routing.ospf import MIN_LS_INTERVAL_S


def ping_ok(emu, src: str, dst: str) -> bool:
    return " 1 received" in emu.node(src).cmd(f"ping -n -c 1 -W 1 {emu.address_of(dst)}")


@dataclass
class PingRun:
    sent: int
    answered: set[int]  # icmp_seq of the replies (not of unreachables)
    elapsed_s: float  # from the first ping to the last
    t_start: float  # time.monotonic() of the first ping

    @property
    def interval_s(self) -> float:
        return self.elapsed_s / self.sent


def play_while_pinging(emu, steps: Iterable[int], step_s: float, play: Callable[[int], None],
                       src: str = "h-a", dst: str = "h-b") -> PingRun:
    deadline = time.monotonic() + 60
    while not ping_ok(emu, src, dst):
        assert time.monotonic() < deadline, "OSPF did not converge in 60 s"
        time.sleep(0.5)
    time.sleep(MIN_LS_INTERVAL_S + 1)  # the LSAs of convergence MinLSInterval behind, as they are mid-run
    pinger = emu.node(src).popen(["ping", "-n", "-i", "0.02", "-W", "1", emu.address_of(dst)], text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    t_start = time.monotonic()
    try:
        due = time.monotonic()
        for step in steps:
            play(step)
            due += step_s
            time.sleep(max(0.0, due - time.monotonic()))
        t_end = time.monotonic()
        while not ping_ok(emu, src, dst):
            assert time.monotonic() - t_end < 30, f"{dst} unreachable 30 s after the last step"
        time.sleep(1.0)
    finally:
        pinger.send_signal(signal.SIGINT)
        out, _ = pinger.communicate(timeout=10)
    elapsed_s = time.monotonic() - t_start
    sent = int(re.search(r"(\d+) packets transmitted", out).group(1))
    answered = {int(m) for m in re.findall(r"bytes from .* icmp_seq=(\d+)", out)}
    return PingRun(sent, answered, elapsed_s, t_start)
