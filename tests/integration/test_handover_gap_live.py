"""Handover gaps on a live network (issue 11): a terminal's beam that moves to another satellite at a slot
boundary carries nothing for ``[terminal] handover_interruption_ms``, and nothing else is lost.

Pings every 10 ms cross the change; the replies (``ping -D`` stamps each one) give every received
request's send time, and the requests that never came back must be one run, sent within the window the
gap explains: from a round trip before the change (their replies come back through the gap) to the gap's
end, give or take a ping interval at each edge and the time the step takes to apply."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import numpy as np
import pytest

from topologies.timeline import LINK_CLASSES

pytestmark = pytest.mark.root

GAP_MS = 250.0
INTERVAL_S = 0.01
SCENARIO = f"""
name = "gap-live"
[time]
start = "2023-07-18T12:00:00Z"
duration_s = 60
step_s = 1.0
[[constellation.shells]]
name = "small"
altitude_km = 550
inclination_deg = 53
planes = 20
sats_per_plane = 20
phasing = 7
[gsl]
min_elevation_deg = 15.0
reconfiguration_interval_s = 15.0
slot_offset_s = 12.0
[terminal]
handover_interruption_ms = {GAP_MS}
[[ground.sites]]
name = "gs-london"
lat_deg = 51.5074
lon_deg = -0.1278
[[terminals]]
name = "ut-chicago"
lat_deg = 41.8781
lon_deg = -87.6298
country = "US"
"""

_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from [\d.]+: icmp_seq=(\d+) ttl=\d+ time=([\d.]+) ms", re.M)


def replies(out: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequence numbers, send times (unix s: arrival stamp - RTT) and RTTs (ms) of the replies in ping -D
    output."""
    rows = [(int(s), float(ts) - float(rtt) / 1000.0, float(rtt)) for ts, s, rtt in _REPLY.findall(out)]
    seq, sent, rtt = (np.array(c) for c in zip(*rows)) if rows else (np.array([]),) * 3
    return seq, sent, rtt


def test_a_beam_carries_nothing_for_the_gap_after_it_changes_satellite(make_emulation, backend):
    from emulator import shaping
    from topologies.plan import plan_scenario
    from topologies.scenario import parse_scenario

    tl = plan_scenario(parse_scenario(SCENARIO, "<gap-live>"))
    gsl = np.flatnonzero(tl.link_class == LINK_CLASSES.index("gsl"))
    beam = next(int(l) for l in gsl if tl.nodes[int(tl.link_a[l])].name == "ut-chicago")
    peer = tl.peer[beam]
    assert peer[26] >= 0 and peer[27] >= 0 and peer[26] != peer[27]  # a new satellite at 12:00:27
    emu = make_emulation(tl, shaping.make_shaper(backend)[0])
    emu.apply_step(26)
    emu.prepare_ahead(26)  # the spare pair waits on the next satellite, as between clock steps
    pinger = emu.node("ut-chicago").popen(["ping", "-D", "-n", "-i", str(INTERVAL_S), "-W", "1",
                                           emu.address_of("h-london")],
                                          text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        time.sleep(1.0)
        t_change = time.time()
        stats = emu.apply_step(27)
        t_applied = time.time()
        ended = emu.settle()
        t_settled = time.time()
        time.sleep(1.0)
    finally:
        pinger.send_signal(signal.SIGINT)
        out, _ = pinger.communicate(timeout=10)
    assert stats.gaps == 1 and ended == 1
    # the gap ends on time: settle() returns GAP_MS after the step began it (a late wake-up aside)
    assert GAP_MS / 1000 <= t_settled - t_change <= GAP_MS / 1000 + 0.05, t_settled - t_change
    seq, sent, rtt = replies(out)
    sent_by_seq = dict(zip(seq.tolist(), sent.tolist()))
    last = int(seq.max())
    lost = sorted(set(range(1, last)) - set(seq.tolist()))
    print(f"\n{len(seq)} replies, lost icmp_seq {lost[:3]}..{lost[-3:]} ({len(lost)}); RTT before "
          f"{np.median(rtt[sent < t_change]):.1f} ms; step applied in {1000 * (t_applied - t_change):.1f} ms")
    assert lost, out[-800:]
    # one run of losses, and none elsewhere
    assert lost == list(range(lost[0], lost[-1] + 1)), lost
    before, after = sent_by_seq[lost[0] - 1], sent_by_seq[lost[-1] + 1]
    rtt_before = float(np.max(rtt[(sent > t_change - 0.5) & (sent < t_change)]))
    # a request sent from a round trip before the change up to the gap's end is lost (its reply or itself
    # meets the gap); the last one answered before it and the first one answered after it bound the run
    earliest = t_change - rtt_before / 1000.0 - 2 * INTERVAL_S
    latest = t_applied + GAP_MS / 1000.0 + 2 * INTERVAL_S + 0.02
    assert before >= earliest, (before - t_change, earliest - t_change)
    assert after <= latest, (after - t_change, latest - t_change)
    # and it lasts at least the gap: the beam carried nothing for GAP_MS
    assert after - before >= GAP_MS / 1000.0, after - before
