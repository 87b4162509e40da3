"""Ping's output parsed into samples.

:mod:`emulator.flows` runs ``ping -D -n -i INTERVAL ...`` inside the source node's namespace; each reply
line carries a wall-clock timestamp, so every sample can be matched to the timeline step that was live
when it was sent.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

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
    t = np.array([got[s][0] if s in got else start_unix_s + (s - 1) * interval_s for s in seqs.tolist()])
    rtt_ms = np.array([got[s][1] if s in got else np.nan for s in seqs.tolist()])
    return PingSamples(t, seqs, rtt_ms)
