"""Recovery figures (emulator.recovery) on a hand-built probe record whose answers are worked out here."""

from __future__ import annotations

import numpy as np
import pytest

from emulator.recovery import describe, event_recovery


def samples() -> dict[str, dict[str, np.ndarray]]:
    """A probe every 0.1 s for 8 s on a 30 ms best path; the event at 3 s: the datagrams sent at 3.0 to
    3.3 s are lost, those at 3.4 and 3.5 s take 40 ms (outside 30 + 1 ms), later ones 30.5 ms."""
    t = np.round(np.arange(80) * 0.1, 3)
    m = np.full(80, 30.5)
    m[(t >= 3.0) & (t < 3.35)] = np.nan
    m[(t > 3.35) & (t < 3.55)] = 40.0
    change = np.zeros(8, bool)
    change[3] = True  # the path moves at the event's step ...
    change[7] = True  # ... and back at the restore, outside the window
    return {"udp": {"kind": "udp-probe", "metric": "one_way", "t_s": t, "step": (t // 1).astype(int),
                    "seq": np.arange(80.0), "measured_ms": m, "predicted_ms": np.full(80, 30.0),
                    "best_ms": np.full(80, 30.0), "path_change": change}}


def event(at: int, end: int | None) -> dict:
    return {"index": 0, "kind": "fail", "target": "sat-0-0~sat-0-1",
            "occurrences": [{"at_s": float(at), "duration_s": None, "step": at, "end_step": end}]}


def test_hand_built_loss_first_arrival_and_bound():
    [rec] = event_recovery([event(3, 6)], samples(), step_s=1.0, played=8)
    [f] = rec["flows"]
    assert rec["at_s"] == 3.0 and rec["step"] == 3
    # window: 3 s to the event's end at step 6, 30 datagrams; 3.0, 3.1, 3.2, 3.3 lost
    assert (f["sent"], f["lost"], f["window_s"]) == (30, 4, 3.0)
    assert f["first_arrival_s"] == pytest.approx(0.4 + 0.040)
    assert f["within_bound_s"] == pytest.approx(0.6 + 0.0305)
    assert f["route_changes"] == 1
    assert "4 of 30 lost in 3 s; first arrival +0.440 s" in "\n".join(describe(rec))


def test_window_limits_and_unplayed_occurrences():
    # open-ended event: WINDOW_STEPS (5) steps, cut at the end of the run (8), so 3 .. 8 s: 50 datagrams
    [rec] = event_recovery([event(3, 8)], samples(), step_s=1.0, played=8)
    assert rec["flows"][0]["sent"] == 50 and rec["flows"][0]["route_changes"] == 2
    # speed 2 (the timeline plays twice as fast as the wall clock): a wall-clock delay counts double
    [rec] = event_recovery([event(3, 6)], samples(), step_s=1.0, played=8, speed=2.0)
    assert rec["flows"][0]["first_arrival_s"] == pytest.approx(0.4 + 0.080)
    # an occurrence the run did not reach, or past the timeline's end, is not measured
    assert event_recovery([event(9, 10), event(3, None)], samples(), step_s=1.0, played=8) == []


def test_compare_prints_and_plots_each_protocols_recovery(tmp_path):
    from emulator.compare import format_table, plot_recovery

    def row(name: str, first: float | None) -> dict:
        flows = [{"flow": "a", "sent": 30, "lost": 4, "first_arrival_s": 0.44, "within_bound_s": 0.63,
                  "route_changes": 1},
                 {"flow": "b", "sent": 10, "lost": 1, "first_arrival_s": first, "within_bound_s": first,
                  "route_changes": 2}]
        return {"protocol": name, "flags": [], "probes": {}, "events": [], "route_ms_median": 1.0,
                "route_ms_p95": 2.0, "route_changes": 3, "probes_lost": 5, "probes_sent": 40, "lost_total": 5,
                "stretch_p50": 1.0, "recovery": [{"index": 0, "kind": "fail", "target": "x~y", "at_s": 3.0,
                                                  "step": 3, "flows": flows}]}

    lines = format_table([row("p1", 0.2), row("p2", None)])
    mine = [ln for ln in lines if "event 0 at 3 s" in ln]
    assert len(mine) == 2
    assert "lost 5/40, first arrival 0.440 s, within bound 0.630 s, route changes 3" in mine[0]
    assert "first arrival never" in mine[1]  # one flow never recovered: the worst is "never"
    plot_recovery([row("p1", 0.2), row("p2", None)], tmp_path)
    assert (tmp_path / "plots" / "recovery.png").stat().st_size > 10_000
