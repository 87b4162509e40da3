"""Clock offset from round trips (emulator.cluster.clocks) on hand-built exchanges with a known offset."""

from __future__ import annotations

import numpy as np
import pytest

from emulator.cluster.clocks import offset
from topologies.errors import ConfigError

T = 1_764_000_000_000_000_000  # ns since 1970: the arithmetic must not overflow int64 there


def exchanges(true_offset_ns, out_ns, back_ns):
    """(t0, t1, t2) of exchanges whose request takes out_ns[i] and answer back_ns[i]."""
    t0 = T + np.arange(len(out_ns), dtype=np.int64) * 10_000_000
    t1 = t0 + np.asarray(out_ns, np.int64) + true_offset_ns  # the remote clock reads true time + offset
    t2 = t0 + np.asarray(out_ns, np.int64) + np.asarray(back_ns, np.int64)
    return t0, t1, t2


def test_symmetric_exchanges_give_the_offset_exactly():
    c = offset(*exchanges(5_000_000, [2_000_000] * 3, [2_000_000] * 3))
    assert c.offset_ms == 5.0 and c.bound_ms == 2.0 and c.samples == 3


def test_the_shortest_round_trip_is_kept_and_bounds_any_asymmetry():
    # asymmetric paths: the estimate errs by (out - back) / 2, never more than half the round trip
    out, back = [9_000_000, 300_000, 4_000_000], [1_000_000, 100_000, 4_000_000]
    c = offset(*exchanges(-3_000_000, out, back))
    assert c.bound_ms == pytest.approx(0.2)  # the 0.4 ms round trip
    assert c.offset_ms == pytest.approx(-3.0 + 0.1)
    assert abs(c.offset_ms - (-3.0)) <= c.bound_ms
    assert c.exceeds(2.5) and not c.exceeds(3.0)


@pytest.mark.parametrize("args", [([], [], []), ([1, 2], [1], [1, 2]), ([T + 5], [T], [T])])
def test_bad_samples_are_config_errors(args):
    with pytest.raises(ConfigError, match="clock samples"):
        offset(*(np.array(a, np.int64) for a in args))
