"""The comparison's figures and flags (emulator.compare) on hand-made results folders: loss, delay
quantiles and convergence computed independently here, and a protocol that carried nothing flagged in
the table and on the plot."""

from __future__ import annotations

import csv
import re
import statistics
from pathlib import Path

import pytest

from emulator.compare import (
    CLEAN_FRACTION,
    CONVERGED_WINDOW_S,
    flags,
    format_table,
    plot_compare,
    probe_figures,
    read_probe_samples,
)
from emulator.report import SAMPLE_COLUMNS

PREDICTED_RTT_MS = 40.0
PREDICTED_OW_MS = 20.0


def write_samples(folder: Path, ping: list[tuple[float, float | None]], udp: list[tuple[float, float | None]]) -> Path:
    """samples.csv as the report writes it: (send time s, measured ms or None when lost) per probe."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "samples.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SAMPLE_COLUMNS)
        for flow, kind, metric, rows, pred in (("ping:0", "ping", "rtt", ping, PREDICTED_RTT_MS),
                                               ("udp-probe:1", "udp-probe", "one_way", udp, PREDICTED_OW_MS)):
            for seq, (t, m) in enumerate(rows):
                w.writerow([flow, kind, metric, f"{t:.4f}", int(t), seq, "" if m is None else f"{m:.3f}",
                            f"{pred:.3f}", f"{pred:.3f}"])
        w.writerow(["path:2", "path", "hops", "0.0", 0, 0, "", "", ""])  # not a probe: ignored
    return path


def healthy(lost_until_s: float, late: tuple[float, float] = (0.0, 0.0)) -> tuple[list, list]:
    """20 s of probes: ping 10/s, udp 20/s; lost before ``lost_until_s``; four probes in five 5 ms late
    in the interval ``late`` (80 %: more than a tail)."""
    ping = [(k / 10, None if k / 10 < lost_until_s else PREDICTED_RTT_MS + 0.1 * (k % 7)) for k in range(200)]
    udp = [(k / 20 + 0.01, None if k / 20 < lost_until_s else PREDICTED_OW_MS + 0.05 * (k % 5))
           for k in range(400)]

    def slow(rows):
        return [(t, m + 5.0 if m is not None and late[0] <= t < late[1] and k % 5 != 0 else m)
                for k, (t, m) in enumerate(rows)]

    return slow(ping), slow(udp)


def flow_convergence(rows: list, predicted: float) -> float | None:
    """First send time opening a clean window of one flow, by brute force."""
    good = [m is not None and abs(m - predicted) <= max(1.0, 0.03 * predicted) for _, m in rows]
    for t, _ in rows:
        if t + CONVERGED_WINDOW_S > rows[-1][0]:
            return None
        inside = [(m, g) for (u, m), g in zip(rows, good) if t <= u < t + CONVERGED_WINDOW_S]
        if all(m is not None for m, _ in inside) and sum(g for _, g in inside) >= CLEAN_FRACTION * len(inside):
            return t
    return None


def expected(ping: list, udp: list) -> dict:
    """The figures, computed here by brute force and the statistics module."""
    allp = sorted([(t, m, PREDICTED_RTT_MS) for t, m in ping] + [(t, m, PREDICTED_OW_MS) for t, m in udp])
    per_flow = [flow_convergence(ping, PREDICTED_RTT_MS), flow_convergence(udp, PREDICTED_OW_MS)]
    conv = None if None in per_flow else max(per_flow)
    rtts = [m for _, m in ping if m is not None]
    q = statistics.quantiles(rtts, n=100, method="inclusive") if len(rtts) > 1 else None
    after = [m for t, m, _ in allp if conv is not None and t >= conv]
    in_bound = None
    if conv is not None:  # per flow: the share of its probes from convergence on within max(1 ms, 3 %)
        shares = []
        for rows, pred in ((ping, PREDICTED_RTT_MS), (udp, PREDICTED_OW_MS)):
            late = [m for t, m in rows if t >= conv]
            ok = [m is not None and abs(m - pred) <= max(1.0, 0.03 * pred) for m in late]
            shares.append(100.0 * sum(ok) / len(ok))
        in_bound = min(shares)
    return {"sent": len(allp), "received": sum(m is not None for _, m, _ in allp), "converged_s": conv,
            "rtt": None if q is None else (q[49], q[94], q[98]), "in_bound_after_pct": in_bound,
            "loss_after_pct": None if conv is None else 100.0 * sum(m is None for m in after) / len(after)}


def row(name: str, probes: dict, daemon: bool = True, late_ms_p95: float = 12.0) -> dict:
    r = {"protocol": name, "complete": True, "daemon": daemon, "route_ms_median": 1.0, "route_ms_p95": 2.0, "route_changes": 3,
         "probes_sent": probes["sent"], "probes_lost": probes["sent"] - probes["received"], "lost_total": 0,
         "events": [], "stretch_p50": 1.0, "probes": probes, "step_s": 1.0, "late_ms_p95": late_ms_p95}
    r["flags"] = flags(r)
    return r


def test_figures_of_a_converging_protocol_and_of_one_that_carried_nothing(tmp_path):
    ping_a, udp_a = healthy(lost_until_s=3.0, late=(3.0, 8.0))
    ping_b = [(k / 10, None) for k in range(200)]
    udp_b = [(k / 20 + 0.01, None) for k in range(400)]
    a = probe_figures(read_probe_samples(write_samples(tmp_path / "a", ping_a, udp_a)))
    b = probe_figures(read_probe_samples(write_samples(tmp_path / "b", ping_b, udp_b)))

    ea, eb = expected(ping_a, udp_a), expected(ping_b, udp_b)
    # every probe arrives from 3 s, but 80 % late until 8 s: clean once fewer than half of 5 s are late
    assert 4.5 < ea["converged_s"] < 8.0  # not at 3 s, when the losses end
    assert (a["sent"], a["received"]) == (ea["sent"], ea["received"])
    assert a["loss_pct"] == pytest.approx(100.0 * (1 - ea["received"] / ea["sent"]))
    assert a["converged_s"] == pytest.approx(ea["converged_s"])
    assert a["loss_after_pct"] == pytest.approx(ea["loss_after_pct"]) and a["loss_after_pct"] == 0.0
    assert (a["rtt_ms"]["p50"], a["rtt_ms"]["p95"], a["rtt_ms"]["p99"]) == pytest.approx(ea["rtt"])
    assert a["in_bound_after_pct"] == pytest.approx(ea["in_bound_after_pct"])
    assert 50.0 < a["in_bound_after_pct"] < 100.0  # the tail of the late stretch lies after convergence
    assert row("a", a)["flags"] == []

    assert (b["sent"], b["received"]) == (600, 0) and b["loss_pct"] == 100.0
    assert b["rtt_ms"] is None and b["one_way_ms"] is None and b["converged_s"] is None
    assert eb["converged_s"] is None
    assert row("b", b)["flags"] == ["NO-TRAFFIC", "NOT-CONVERGED"]


def test_delivered_but_off_the_prediction_is_not_converged(tmp_path):
    ping = [(k / 10, PREDICTED_RTT_MS * 1.5) for k in range(200)]  # every reply arrives, 50 % late
    udp = [(k / 20, PREDICTED_OW_MS) for k in range(400)]
    p = probe_figures(read_probe_samples(write_samples(tmp_path / "c", ping, udp)))
    assert expected(ping, udp)["converged_s"] is None and p["converged_s"] is None
    assert p["loss_pct"] == 0.0 and p["loss_after_pct"] is None
    assert row("c", p)["flags"] == ["NOT-CONVERGED"]
    # a centralised protocol's routes are there from the start: it is the emulation that missed
    assert row("c", p, daemon=False)["flags"] == ["DELAYS-OFF"]


def test_table_and_plot_flag_the_protocol_that_carried_nothing(tmp_path):
    ping_a, udp_a = healthy(lost_until_s=1.0)
    sa = read_probe_samples(write_samples(tmp_path / "a", ping_a, udp_a))
    sb = read_probe_samples(write_samples(tmp_path / "b", [(k / 10, None) for k in range(200)],
                                          [(k / 20, None) for k in range(400)]))
    rows = [row("good-proto", probe_figures(sa)), row("dead-proto", probe_figures(sb))]
    rows[0]["valid_pct"] = 38.58  # the run summary's validity share (emulator.validity), relayed
    lines = format_table(rows)
    status = {line.split()[0]: line.split()[1] for line in lines[1:3]}
    assert status == {"good-proto": "ok", "dead-proto": "NO-TRAFFIC,NOT-CONVERGED"}
    dead = next(line for line in lines[1:3] if line.split()[0] == "dead-proto").split()
    # loss %, in bound after %, valid % (no validity in its summary), RTT p50
    assert dead[3] == "100.00" and dead[5] == "-" and dead[6] == "-" and dead[7] == "-"
    assert re.search(r"in bound after %\s+valid %\s+RTT p50 ms", lines[0])
    good = next(line for line in lines[1:3] if line.split()[0] == "good-proto").split()
    assert good[6] == "38.6" and float(good[7]) == pytest.approx(probe_figures(sa)["rtt_ms"]["p50"], abs=0.01)
    assert any(line.startswith("!! dead-proto: NO-TRAFFIC") and "0 of 600 probes" in line for line in lines)
    assert not any(line.startswith("!! good-proto") for line in lines)

    plot_compare(rows, tmp_path, {"good-proto": sa, "dead-proto": sb})
    svg = (tmp_path / "plots" / "compare.svg").read_text()
    assert "FLAGGED: dead-proto: NO-TRAFFIC, NOT-CONVERGED" in svg
    assert "dead-proto (0/200 arrived) NO-TRAFFIC" in svg  # its CDF's legend entry
    assert "good-proto (" in svg and "good-proto: " not in svg
    assert "good-proto (190/200 arrived, 39 % of samples valid)" in svg  # lost before 1 s: 10 pings
    assert (tmp_path / "plots" / "compare.png").stat().st_size > 10_000


def test_converged_early_then_off_the_prediction_is_flagged(tmp_path):
    """A clean start then four probes in five 5 ms late for the rest of the run (as an OSPF run on a
    loaded machine did): converged, but the delays after it are off, and the table says so."""
    ping, udp = healthy(lost_until_s=0.0, late=(6.5, 99.0))
    p = probe_figures(read_probe_samples(write_samples(tmp_path / "d", ping, udp)))
    e = expected(ping, udp)
    assert e["converged_s"] is not None and e["converged_s"] < 6.5
    assert p["converged_s"] == pytest.approx(e["converged_s"]) and p["loss_after_pct"] == 0.0
    assert p["in_bound_after_pct"] == pytest.approx(e["in_bound_after_pct"])
    assert p["in_bound_after_pct"] < 100.0 * CLEAN_FRACTION
    r = row("late-delays", p)
    assert r["flags"] == ["DELAYS-OFF"]
    lines = format_table([r])
    assert lines[1].split()[1] == "DELAYS-OFF"
    assert any(f"only {e['in_bound_after_pct']:.1f} % of a flow's probes" in line for line in lines)


def test_steps_applied_more_than_one_step_late_flag_the_run(tmp_path):
    ping, udp = healthy(lost_until_s=0.0)
    p = probe_figures(read_probe_samples(write_samples(tmp_path / "e", ping, udp)))
    assert row("on-time", p, late_ms_p95=999.0)["flags"] == []
    late = row("lagging", p, late_ms_p95=12908.0)
    assert late["flags"] == ["LATE"]
    assert any("12908 ms late at p95 (one step is 1000 ms)" in line for line in format_table([late]))


def test_compare_run_ids_are_checked_before_anything_is_built(tmp_path):
    import argparse

    from emulator.compare import compare
    from topologies.errors import ConfigError

    args = argparse.Namespace(protocols="shortest-delay,predictive", scenario=None, timeline=None,
                              results=str(tmp_path / "c"), run_id="h" * 30)
    # 'h...h-predictive' is 41 characters, 'h...h-shortest-delay' 45: the latter names --run-id and the protocol
    with pytest.raises(ConfigError, match=r"--run-id.*for protocol 'shortest-delay'"):
        compare(args)
    assert not (tmp_path / "c").exists()
