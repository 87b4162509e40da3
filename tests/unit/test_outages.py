"""Acquisition delays and random pointing outages (topologies/outages.py)."""

import numpy as np
import pytest

from topologies.errors import ConfigError
from topologies.outages import apply_acquisition, pointing_outages, steps_for


def runs(mask_row):
    """(start, length) of every run of True in a 1-D bool array."""
    m = np.concatenate([[False], np.asarray(mask_row, bool), [False]])
    edges = np.flatnonzero(np.diff(m.astype(np.int8)))
    return list(zip(edges[::2].tolist(), (edges[1::2] - edges[::2]).tolist()))


def test_steps_for_is_the_ceiling_without_float_noise():
    assert steps_for(3.0, 1.0) == 3
    assert steps_for(0.3, 0.1) == 3  # 0.3 / 0.1 = 2.9999999999999996
    assert steps_for(2.5, 1.0) == 3
    assert steps_for(0.0, 1.0) == 0
    with pytest.raises(ConfigError):
        steps_for(1.0, 0.0)


def test_link_that_comes_back_stays_down_for_ceil_acquisition_over_step_steps():
    available = np.array([[1, 1, 0, 0, 1, 1, 1, 1, 1, 1]], bool)
    acq = apply_acquisition(available, None, steps_for(2.5, 1.0))
    assert acq[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    # never acquiring while not available, and up again right after
    assert not (acq & ~available).any()


def test_interruption_restarts_acquisition():
    available = np.array([[0, 1, 1, 0, 1, 1, 1, 1]], bool)
    acq = apply_acquisition(available, None, 3, initially_acquired=True)
    assert acq[0].tolist() == [0, 1, 1, 0, 1, 1, 1, 0]


def test_new_partner_triggers_acquisition_and_start_state_is_configurable():
    available = np.ones((1, 6), bool)
    changed = np.zeros((1, 6), bool)
    changed[0, 3] = True
    assert apply_acquisition(available, changed, 2)[0].tolist() == [0, 0, 0, 1, 1, 0]
    assert apply_acquisition(available, None, 2, initially_acquired=False)[0].tolist() == [1, 1, 0, 0, 0, 0]
    assert not apply_acquisition(available, changed, 0).any()


def test_outages_are_reproducible_with_a_seed_and_differ_with_another():
    a = pointing_outages(50, 500, 1.0, 60.0, 5.0, seed=7)
    b = pointing_outages(50, 500, 1.0, 60.0, 5.0, seed=7)
    c = pointing_outages(50, 500, 1.0, 60.0, 5.0, seed=8)
    assert a.shape == (50, 500)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.any()


def test_outage_statistics_match_mtbf_and_mean_duration():
    mtbf_s, dur_s, step_s = 40.0, 8.0, 0.5
    out = pointing_outages(1000, 2000, step_s, mtbf_s, dur_s, seed=1)
    # long-run fraction of time in outage of an alternating renewal process
    assert out.mean() == pytest.approx(dur_s / (mtbf_s + dur_s), abs=0.01)
    lengths = [n for row in out[:200] for s, n in runs(row) if s > 0 and s + n < out.shape[1]]
    # sampled at steps: a duration D covers about D / step samples
    assert np.mean(lengths) * step_s == pytest.approx(dur_s, rel=0.1)


def test_no_outages_without_mtbf_and_bad_parameters_are_config_errors():
    assert not pointing_outages(3, 10, 1.0, None, 5.0, 0).any()
    with pytest.raises(ConfigError, match="outage_mean_duration_s"):
        pointing_outages(3, 10, 1.0, 10.0, 0.0, 0)
    with pytest.raises(ConfigError, match="outage_mtbf_s"):
        pointing_outages(3, 10, 1.0, -1.0, 5.0, 0)
