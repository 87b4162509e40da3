"""Probes: real measurement traffic started inside the emulated nodes, and their results parsed.

Ping runs as ``ping -D -n -i INTERVAL -w DURATION ADDRESS`` inside the source node's namespace; each
reply line carries a wall-clock timestamp, so every sample can be matched to the timeline step that
was live when it was sent.
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_REPLY = re.compile(r"^\[(?P<t>\d+\.\d+)\] \d+ bytes from [\d.]+: icmp_seq=(?P<seq>\d+) .*time=(?P<rtt>[\d.]+) ms")


@dataclass
class PingSamples:
    """Per sent echo request: send time (unix s), sequence, RTT in ms (NaN if lost)."""

    sent_unix_s: np.ndarray
    seq: np.ndarray
    rtt_ms: np.ndarray

    @property
    def lost(self) -> int:
        return int(np.isnan(self.rtt_ms).sum())


def parse_ping(text: str, start_unix_s: float, interval_s: float, count: int | None = None) -> PingSamples:
    """Parse ``ping -D`` output into one row per request sent.

    Lost requests are those whose sequence number never got a reply; their send time is estimated
    from the schedule (``start + (seq-1) * interval``).
    """
    got: dict[int, tuple[float, float]] = {}
    for line in text.splitlines():
        m = _REPLY.match(line.strip())
        if m:
            seq = int(m.group("seq"))
            rtt = float(m.group("rtt"))
            got.setdefault(seq, (float(m.group("t")) - rtt / 1e3, rtt))
    m = re.search(r"(\d+) packets transmitted", text)
    sent = int(m.group(1)) if m else (max(got) if got else 0)
    if count is not None:
        sent = max(sent, count)
    seqs = np.arange(1, sent + 1)
    t = np.array([got[s][0] if s in got else start_unix_s + (s - 1) * interval_s for s in seqs])
    rtt = np.array([got[s][1] if s in got else np.nan for s in seqs])
    return PingSamples(t, seqs, rtt)


class PingProbe:
    """One ping flow between two emulated nodes, writing its raw output to ``out``."""

    def __init__(self, node, src: str, dst: str, address: str, rate_pps: float, duration_s: float,
                 out: Path) -> None:
        self.src, self.dst, self.address = src, dst, address
        self.interval_s = 1.0 / rate_pps
        self.duration_s = duration_s
        self.out = out
        self._file = open(out, "w")
        argv = ["ping", "-D", "-n", "-i", f"{self.interval_s:.3f}", "-w", f"{max(1, round(duration_s))}",
                "-W", "1", address]
        self.started_unix_s = time.time()
        self.proc = node.popen(argv, stdout=self._file, stderr=subprocess.STDOUT)

    def wait(self, timeout_s: float) -> None:
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._file.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: ping prints its statistics
        self.wait(3)

    def samples(self) -> PingSamples:
        return parse_ping(self.out.read_text(errors="replace"), self.started_unix_s, self.interval_s)
