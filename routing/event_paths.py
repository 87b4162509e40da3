"""What a timeline's scheduled events (``[[events]]``, :mod:`topologies.events`) do to the predicted
paths: for each occurrence and each endpoint pair, the least-delay path just before the event's step and
at it, and the RTT before and after. Pure (no kernel); ``satnetem plan`` prints it."""

from __future__ import annotations

from typing import Any

import numpy as np

from topologies.timeline import Timeline

from .graph import LinkGraph, build_graph, path, path_delay_ms

#: occurrences of one repeating event whose paths are worked out (the rest are counted, not computed)
MAX_OCCURRENCES = 20


def event_path_effects(tl: Timeline, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The events recorded in ``tl.report["events"]`` with, per occurrence, their effect on each pair.

    Returns
    -------
    list of dict
        Each event's record (see :func:`topologies.events.apply_events`) with ``effects`` added to each
        of its first :data:`MAX_OCCURRENCES` occurrences inside the timeline: per pair ``src``, ``dst``,
        ``step``, ``rtt_before_ms`` (step - 1; None at step 0 or if unreachable), ``rtt_after_ms`` (at the
        step; None if unreachable), ``path_changed`` (bool), ``reachable_after`` (bool). RTT is twice the
        one-way delay of the least-delay path, as ``plan``'s path figures are.
    """
    graphs: dict[int, tuple[LinkGraph, Any]] = {}

    def at(step: int, src: int, dst: int) -> tuple[list[int], float | None]:
        if step not in graphs:
            snap = tl.snapshot(step)
            graphs[step] = (build_graph(tl.link_a, snap, len(tl.nodes)), snap)
        graph, snap = graphs[step]
        nodes, links, w = path(graph, src, dst)
        return nodes, (2 * path_delay_ms(snap, links) if np.isfinite(w) else None)

    out = []
    for ev in tl.report.get("events", []):
        ev = dict(ev)
        occ = []
        for n, o in enumerate(ev["occurrences"]):
            o = dict(o)
            if o["end_step"] is not None and n < MAX_OCCURRENCES:
                k = int(o["step"])
                o["effects"] = []
                for a, b in pairs:
                    s, d = tl.node_index(a), tl.node_index(b)
                    before, rtt_before = at(k - 1, s, d) if k > 0 else ([], None)
                    after, rtt_after = at(k, s, d)
                    o["effects"].append({"src": a, "dst": b, "step": k, "rtt_before_ms": rtt_before,
                                         "rtt_after_ms": rtt_after, "path_changed": k > 0 and before != after,
                                         "reachable_after": rtt_after is not None})
            occ.append(o)
        ev["occurrences"] = occ
        out.append(ev)
    return out


def describe(ev: dict[str, Any], step_s: float) -> list[str]:
    """Lines that say what one event (a record of :func:`event_path_effects`) does, for ``plan``."""
    occ = ev["occurrences"]
    inside = [o for o in occ if o["end_step"] is not None]
    what = {"fail": "down", "restore": "restored", "degrade": "degraded", "region-outage": "down"}[ev["kind"]]
    first = occ[0]
    when = f"at {first['at_s']:g} s"
    if len(occ) > 1:
        when = f"every {occ[1]['at_s'] - occ[0]['at_s']:g} s from {first['at_s']:g} s ({len(occ)} times)"
    if first["duration_s"] is not None:
        when += f" for {first['duration_s']:g} s"
    if not inside:
        return [f"event {ev['index']}: {ev['kind']} {ev['target']} {when}: after the end of this timeline, "
                f"no effect"]
    sites = f" at {', '.join(ev['sites'])}" if ev.get("sites") else (" (no ground site inside)"
                                                                      if "sites" in ev else "")
    lines = [f"event {ev['index']}: {ev['kind']} {ev['target']}{sites} {when} (step {inside[0]['step']}): "
             f"{ev['links']} link slot(s) {what}"]
    for e in inside[0].get("effects", []):
        t = f"{e['step'] * step_s:g} s"
        before = "-" if e["rtt_before_ms"] is None else f"{e['rtt_before_ms']:.2f}"
        if not e["reachable_after"]:
            lines.append(f"  {e['src']} -> {e['dst']}: unreachable from {t} (RTT before {before} ms)")
        elif e["step"] == 0:
            lines.append(f"  {e['src']} -> {e['dst']}: in force from the start, RTT {e['rtt_after_ms']:.2f} ms")
        else:
            change = "path changed" if e["path_changed"] else "path unchanged"
            lines.append(f"  {e['src']} -> {e['dst']}: {change} at {t}, RTT {before} -> {e['rtt_after_ms']:.2f} ms")
    return lines
