"""The underlay correction of cross-host links (emulator.cluster.underlay) on hand-computed values, and its
refusals of bad input; measuring needs root and fake hosts: tests/integration/test_cluster_lab.py."""

from __future__ import annotations

import numpy as np
import pytest

from topologies.errors import ConfigError


def test_underlay_correction_subtracts_the_one_way_delay_and_flags_slower_links():
    from emulator.cluster.underlay import corrected_delay_ms, measure

    d, slow = corrected_delay_ms(np.array([[2.0, 0.5], [1.0, 3.25]]), 1.0)
    assert d.tolist() == [[1.0, 0.0], [0.0, 2.25]] and slow.tolist() == [[False, True], [False, False]]
    for bad in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ConfigError):
            corrected_delay_ms(np.zeros(2), bad)
    with pytest.raises(ConfigError, match="key 'targets'"):
        measure(["10.0.0.1; reboot"])
    with pytest.raises(ConfigError, match="key 'count'"):
        measure(["10.0.0.1"], count=0)
