"""Recovery after scheduled events (``[[events]]``), measured on a run's probe samples.

For each occurrence of an event that the run played, and each ping or udp-probe flow:

- ``lost``: packets sent in the window after the event's step time ``t`` that never arrived (of
  ``sent`` in that window); the window is ``window_steps`` steps, cut short where the event ends (a
  restore is an event of its own) or the run does;
- ``first_arrival_s``: from ``t`` to the arrival of the first packet sent at or after ``t`` that arrived
  (send time plus its measured delay: the RTT for ping, the one-way delay for udp-probe);
- ``within_bound_s``: from ``t`` to the arrival of the first such packet whose delay is within the
  bound of the best path at its step (``best + max(1 ms, 3 % of best)``, the bound the run's delay
  error is held to);
- ``route_changes``: steps at which the flow's predicted forward path (the protocol's routes) differs
  from the step before, from the step before the event (where ``predictive`` moves, make before break)
  to the window's end.

A figure is None where nothing arrived (or nothing within the bound) until the end of the run. Pure:
numpy arrays in, JSON-able dicts out; :mod:`emulator.report` feeds it and prints it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: steps after an event over which lost packets and route changes are counted
WINDOW_STEPS = 5
#: occurrences of one repeating event that are measured
MAX_OCCURRENCES = 20


def delay_bound_ms(best_ms: np.ndarray) -> np.ndarray:
    """The delay error a sample may have over the best path's delay: max(1 ms, 3 %)."""
    return np.maximum(1.0, 0.03 * np.asarray(best_ms, float))


def flow_recovery(s: dict[str, np.ndarray], t_event_s: float, k_event: int, step_s: float, played: int,
                  speed: float = 1.0, window_steps: int = WINDOW_STEPS) -> dict[str, Any]:
    """One flow's recovery after one event at step ``k_event`` (time ``t_event_s``), see the module;
    ``played``: the step the window ends at, at the latest (the run's end or the event's).

    ``s`` is a flow's samples as :func:`emulator.report.build_samples` makes them: ``t_s`` (send time,
    timeline seconds), ``measured_ms`` (NaN: lost), ``best_ms``, and ``path_change`` (per step, bool).
    Measured delays are wall-clock; ``speed`` turns them into timeline seconds.
    """
    t, m, best = (np.asarray(s[k], float) for k in ("t_s", "measured_ms", "best_ms"))
    end_s = min(t_event_s + window_steps * step_s, played * step_s)
    inwin = (t >= t_event_s) & (t < end_s)
    after = t >= t_event_s
    arrived = after & np.isfinite(m)
    arrival_s = t + np.where(np.isfinite(m), m, 0.0) / 1e3 * speed - t_event_s
    first = float(arrival_s[arrived].min()) if arrived.any() else None
    with np.errstate(invalid="ignore"):
        ok = arrived & (m <= best + delay_bound_ms(best))
    within = float(arrival_s[ok].min()) if ok.any() else None
    change = np.asarray(s.get("path_change", np.zeros(0, bool)), bool)
    k0, k1 = max(1, k_event - 1), min(k_event + window_steps, played, len(change))
    return {"sent": int(inwin.sum()), "lost": int((inwin & ~np.isfinite(m)).sum()),
            "window_s": round(end_s - t_event_s, 6),
            "first_arrival_s": None if first is None else round(first, 6),
            "within_bound_s": None if within is None else round(within, 6),
            "route_changes": int(change[k0:k1].sum()) if k1 > k0 else 0}


def event_recovery(events: list[dict[str, Any]], samples: dict[str, dict[str, np.ndarray]], step_s: float,
                   played: int, speed: float = 1.0) -> list[dict[str, Any]]:
    """Per played occurrence of each event (records of :func:`topologies.events.apply_events`), each
    ping/udp-probe flow's :func:`flow_recovery`.

    Returns
    -------
    list of dict
        ``index``, ``kind``, ``target``, ``at_s`` (the step's time), ``step``, ``flows``: per flow its
        figures with ``flow`` (label) and ``metric``; in event, then occurrence order.
    """
    out = []
    for ev in events:
        played_occ = [o for o in ev["occurrences"] if o["end_step"] is not None and o["step"] < played]
        for o in played_occ[:MAX_OCCURRENCES]:
            k = int(o["step"])
            t = k * step_s
            end = min(played, int(o["end_step"]))
            flows = [{"flow": label, "metric": str(s["metric"]),
                      **flow_recovery(s, t, k, step_s, end, speed)} for label, s in samples.items()]
            out.append({"index": ev["index"], "kind": ev["kind"], "target": ev["target"], "at_s": t, "step": k,
                        "flows": flows})
    return out


def describe(rec: dict[str, Any]) -> list[str]:
    """Lines for the run's printed summary: one per event occurrence, one per flow."""

    def s(v: float | None) -> str:
        return "never" if v is None else f"+{v:.3f} s"

    lines = [f"event {rec['index']}: {rec['kind']} {rec['target']} at {rec['at_s']:g} s (step {rec['step']})"]
    for f in rec["flows"]:
        lines.append(f"  {f['flow']}: {f['lost']} of {f['sent']} lost in {f['window_s']:g} s; first arrival "
                     f"{s(f['first_arrival_s'])}, delay within bound {s(f['within_bound_s'])}; "
                     f"{f['route_changes']} route change(s)")
    return lines
