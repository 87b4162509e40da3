"""How a heavy step's parts sent ahead between steps are sized (Emulation.ahead_route_us): a slow part must
not make the next ones overrun the time left before the next step. No root needed."""

from __future__ import annotations

import numpy as np
from handmade import grid_timeline

from emulator.network import AHEAD_RATES_KEPT, Emulation
from emulator.rtnl import AHEAD_PACE

BUDGET_US = 400_000.0  # the time a part may take: ~0.4 s left between two steps


def test_parts_sized_after_a_slow_part_fit_their_time():
    """Parts cost 5.1-5.9 us a route, and one in eight (the last of a slot boundary's, on the access example)
    7.7 us. Each part gets as many routes as the sizing says fit the budget; the time it then takes (the
    rate it turns out to have x its routes) must stay within the budget once a slow part has been seen.
    Sized at the average alone, the slow parts overran by ~40% and some others by a few per cent."""
    emu = Emulation(grid_timeline(), None, "shortest-delay")
    rng = np.random.default_rng(3)
    seen_slow = False
    over = []
    for part in range(64):
        rate_us = 7.7 if part % 8 == 7 else float(rng.uniform(5.1, 5.9))
        routes = int(BUDGET_US / emu.ahead_route_us())
        taken_us = routes * rate_us
        if seen_slow and taken_us > BUDGET_US:
            over.append((part, round(taken_us / BUDGET_US, 3)))
        emu.record_ahead_rate(rate_us)
        seen_slow |= rate_us > 7.0
    assert seen_slow and not over


def test_a_slow_part_stops_counting_after_the_parts_kept():
    """The sizing is no slower than the average, and a slow part stops weighing once AHEAD_RATES_KEPT
    sends have come after it: it follows what the kernel does now, not the worst of the whole run."""
    emu = Emulation(grid_timeline(), None, "shortest-delay")
    for _ in range(4):
        emu.record_ahead_rate(5.0)
    emu.record_ahead_rate(9.0)
    for _ in range(AHEAD_RATES_KEPT - 1):
        emu.record_ahead_rate(5.0)
        assert emu.ahead_route_us() == 9.0
    emu.record_ahead_rate(5.0)
    assert 5.0 <= emu.ahead_route_us() < 5.01
    # the average, when higher than every rate kept: it starts at the pace's (1e6 / AHEAD_PACE = 10 us)
    fresh = Emulation(grid_timeline(), None, "shortest-delay")
    fresh.record_ahead_rate(4.0)
    assert fresh.ahead_route_us() == 0.5 * 1e6 / AHEAD_PACE + 0.5 * 4.0
