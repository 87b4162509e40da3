"""The flows' legend of the error CDF and loss plots: beside the axes when there are many flows (the access
example's 24 terminals), so that it hides no curve; inside for a few. Positions are read from matplotlib's
drawn figure, before it is saved."""

from __future__ import annotations

import numpy as np
import pytest

from emulator import report


def _samples(n: int) -> dict:
    rng = np.random.default_rng(n)
    out = {}
    for i in range(n):
        t = np.arange(0.0, 30.0, 0.5)
        pred = np.full(len(t), 20.0 + i)
        meas = pred + rng.exponential(0.3, len(t))
        meas[::17] = np.nan  # a few lost
        out[f"ping:ut-{i:02d}--h-pop-{i:02d}"] = {"t_s": t, "measured_ms": meas, "predicted_ms": pred}
    return out


@pytest.fixture
def drawn(monkeypatch):
    """The axes and legend extents (display units) of each figure saved, by name."""
    seen = {}
    save = report._save

    def recording(fig, folder, name):
        fig.canvas.draw()
        ax = fig.axes[0]
        leg = ax.get_legend()
        seen[name] = (ax.get_window_extent(), leg.get_window_extent(), len(leg.get_texts()))
        return save(fig, folder, name)

    monkeypatch.setattr(report, "_save", recording)
    return seen


@pytest.mark.parametrize("n", [24, 40])
def test_many_flows_get_their_legend_beside_the_axes(drawn, tmp_path, n):
    report.plot_error_cdf(_samples(n), tmp_path)
    report.plot_loss(_samples(n), tmp_path)
    for name in ("rtt_error_cdf", "loss"):
        ax, leg, entries = drawn[name]
        assert entries == n
        assert leg.x0 >= ax.x1, f"{name}: legend starts at x={leg.x0:.0f}, inside the axes (right edge {ax.x1:.0f})"
        assert (tmp_path / f"{name}.png").stat().st_size > 0


def test_a_few_flows_keep_their_legend_inside_the_axes(drawn, tmp_path):
    report.plot_error_cdf(_samples(3), tmp_path)
    ax, leg, entries = drawn["rtt_error_cdf"]
    assert entries == 3
    assert ax.x0 <= leg.x0 and leg.x1 <= ax.x1 and ax.y0 <= leg.y0 and leg.y1 <= ax.y1
