"""A hold on a port's egress counts from when the packet was queued, not from when the delay daemon read it.

The queueing rule of a departure stamps it (``meta mark set meta time``, emulator/shaping/nfnl.py) and the
daemon counts the hold from that stamp (delayd.c), as it counts an arrival's from the tc stamp. Here the
daemon is stopped for PAUSE_MS while a 1 kpps stream crosses h1 - r1 - h2, held on r1's egress toward h2
(as a satellite holds what it sends toward the ground) for HOLD_MS > PAUSE_MS: a datagram queued during the
pause is due after it, so it must leave on time. Counted from the read, it would leave the time it waited
unread late. Delays are measured by the test itself: send and receive times on CLOCK_MONOTONIC."""

from __future__ import annotations

import pytest
from vethchain import paused_stream, r1_egress, routed_line

from emulator.shaping.base import LinkShape
from emulator.shaping.userspace import UserspaceShaper

pytestmark = pytest.mark.root

HOLD_MS = 20.0
PAUSE_MS = 12.0
INTERVAL_MS = 1.0
LATE_MS = 2.0  # the daemon's wake-up after the pause, the receiver's read
PORT = 47100


def test_an_egress_hold_counts_from_the_queueing_not_the_read():
    with routed_line("egs", 2, "10.82") as (c, _peered, dst):
        held = r1_egress(c)
        sh = UserspaceShaper(carry=False, shards=1)
        try:
            got, (stop_ns, cont_ns), stats = paused_stream(
                c, sh, [(held, LinkShape(delay_ms=HOLD_MS, rate_mbps=1000.0))], dst, PORT, 1000, INTERVAL_MS / 1e3,
                "", 0.5, PAUSE_MS / 1e3)
        finally:
            sh.close()
    assert len(got) >= 900, len(got)
    pause_ms = (cont_ns - stop_ns) / 1e6
    assert PAUSE_MS <= pause_ms <= HOLD_MS - 4, pause_ms  # queued in the pause means due after it
    # never early: the daemon may let a packet go 0.2 ms ahead (its lead), no more
    assert min(d for _, d in got) >= HOLD_MS - 0.2, min(d for _, d in got)
    # queued in the pause (sent at least 0.5 ms after it began, 3 ms before it ended): held HOLD_MS from there;
    # counted from the read each would be late by the time it waited, >= 3 ms
    judged = [d for sent, d in got if stop_ns + 0.5e6 <= sent <= cont_ns - 3e6]
    assert len(judged) >= 5, (len(judged), pause_ms)
    assert max(judged) <= HOLD_MS + LATE_MS, (judged, pause_ms)
    assert stats["stamped"] >= len(got), stats  # every departure came stamped
