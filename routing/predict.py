"""Predicted delays and paths: what the physics and the installed routes say a probe should see.

For a centralised protocol the prediction follows the route table the protocol computes at each step
(the routes the emulator installs); for a daemon-driven one (OSPF) the daemons choose, so the
prediction is the shortest-delay path. ``best`` is always the shortest-delay path: the best any
protocol could do, for path stretch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from topologies.timeline import Timeline

from .base import RouteTable, RoutingProtocol, get_protocol
from .graph import build_graph, next_hops, path_delay_ms
from .paths import table_path


@dataclass
class PairPrediction:
    """Per step (shape (n_steps,)): one-way delays in ms (NaN = unreachable) and the forward paths."""

    forward_ms: np.ndarray
    reverse_ms: np.ndarray
    best_forward_ms: np.ndarray
    best_reverse_ms: np.ndarray
    forward_paths: list[list[int]]

    @property
    def rtt_ms(self) -> np.ndarray:
        return self.forward_ms + self.reverse_ms

    @property
    def best_rtt_ms(self) -> np.ndarray:
        return self.best_forward_ms + self.best_reverse_ms


def _compute_for(proto: RoutingProtocol) -> Any:
    """The protocol's ``compute_for(timeline, step, snapshot, wanted)`` (its table with only the destinations
    among ``wanted``), or None: also when a subclass overrides ``compute`` without it, whose table the
    inherited one would not be."""
    compute_for = getattr(proto, "compute_for", None)
    if compute_for is None:
        return None
    mro = type(proto).__mro__
    owner = next(c for c in mro if "compute_for" in c.__dict__)
    return compute_for if owner is next(c for c in mro if "compute" in c.__dict__) else None


def predict(tl: Timeline, protocol: str | RoutingProtocol, pairs: list[tuple[int, int]],
            steps: int | None = None) -> dict[tuple[int, int], PairPrediction]:
    """Predicted one-way delays and paths of node pairs over the first ``steps`` steps.

    Parameters
    ----------
    tl : Timeline
    protocol : str or RoutingProtocol
        The protocol whose routes are installed.
    pairs : list of (src, dst) node indices
    steps : int, optional
        How many steps (default: all).
    """
    proto = get_protocol(protocol) if isinstance(protocol, str) else protocol
    centralised = getattr(proto, "kind", "centralised") != "daemon"
    # the protocol's table towards the pairs' ends only, where it can (compute_for): each destination's row is
    # computed on its own, so it is the full table's (a table of every destination is ~0.65 s a step at 9,300
    # nodes, which made the report of a 2-minute access run take 75 s)
    compute_for = _compute_for(proto)
    ends = np.unique(np.array([x for p in pairs for x in p], np.int64))
    n = tl.n_steps if steps is None else min(steps, tl.n_steps)
    out = {p: PairPrediction(np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan),
                             [[] for _ in range(n)]) for p in pairs}
    for k in range(n):
        snap = tl.snapshot(k)
        graph = build_graph(tl.link_a, snap, len(tl.nodes))
        # the least-delay path towards every end at once (one Dijkstra tree each, the graph's matrix built once)
        dist, nh, link = next_hops(graph, ends)
        least = RouteTable(k, ends, nh, link, dist)
        if not centralised:
            table = None
        elif compute_for is not None:
            table = compute_for(tl, k, snap, ends)
        else:
            table = proto.compute(tl, k, snap)
        for (a, b), pred in out.items():
            for src, dst, arr, best in ((a, b, pred.forward_ms, pred.best_forward_ms),
                                        (b, a, pred.reverse_ms, pred.best_reverse_ms)):
                nodes_best, links_best = table_path(least, src, dst)
                if nodes_best:
                    best[k] = path_delay_ms(snap, links_best)
                if table is not None:
                    try:
                        nodes, links = table_path(table, src, dst)
                    except ValueError:  # a loop: the prediction is that nothing arrives
                        nodes, links = [], []
                    if nodes:
                        arr[k] = path_delay_ms(snap, links)
                else:
                    nodes = nodes_best
                    arr[k] = best[k]
                if src == a:
                    pred.forward_paths[k] = nodes
    return out


def in_handover_gap(tl: Timeline, forward_paths: list[list[int]], t_s: np.ndarray,
                    rtt_ms: np.ndarray | None = None) -> np.ndarray:
    """Which probes a handover gap is predicted to drop.

    A ground link that changes satellite at step k carries nothing for its ``handover_interruption_ms``
    from that step's time T (:func:`topologies.gsl.handover_gaps`). A probe sent at ``t`` is lost when its
    predicted forward path crosses that link while it carries nothing: sent in ``[T, T + gap)`` on the path
    of step k, or, for a round trip (``rtt_ms`` given), sent in ``[T - rtt, T)`` on the path of step k - 1
    through the link's satellite of then, so that its reply comes back through the gap. The time a packet
    takes to reach the link along the path is neglected (a beam or gateway antenna is the first or last hop
    of the paths that ground nodes start or end).

    Parameters
    ----------
    tl : Timeline
    forward_paths : list of list of int
        Node path per step (:attr:`PairPrediction.forward_paths`).
    t_s : ndarray, (n,) float
        Send times, s from the timeline's start.
    rtt_ms : ndarray, (n,) float, optional
        Predicted round-trip time of each probe (ping); None for one-way probes.

    Returns
    -------
    ndarray, (n,) bool
    """
    from topologies.gsl import handover_gaps

    t = np.asarray(t_s, float)
    out = np.zeros(len(t), bool)
    links, steps, gap_ms = handover_gaps(tl)
    if not len(links) or not len(t):
        return out
    step = np.floor(t / tl.step_s).astype(np.int64)
    n = len(forward_paths)
    edges: dict[int, set[frozenset[int]]] = {}

    def on_path(k: int, a: int, b: int) -> bool:
        if not 0 <= k < n:
            return False
        if k not in edges:
            p = forward_paths[k]
            edges[k] = {frozenset(e) for e in zip(p[:-1], p[1:])}
        return frozenset((a, b)) in edges[k]

    rtt_s = None if rtt_ms is None else np.nan_to_num(np.asarray(rtt_ms, float), nan=0.0) / 1000.0
    for l, k, g in zip(links.tolist(), steps.tolist(), gap_ms.tolist()):
        a, big_t = int(tl.link_a[l]), k * tl.step_s
        if on_path(k, a, int(tl.peer[l, k])):
            out |= (t >= big_t) & (t < big_t + g / 1000.0) & (step == k)
        if rtt_s is not None and on_path(k - 1, a, int(tl.peer[l, k - 1])):
            out |= (t >= big_t - rtt_s) & (t < big_t) & (step == k - 1)
    return out
