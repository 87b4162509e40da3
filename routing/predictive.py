"""Predictive routing: make before break. Routes of step ``k`` already avoid the links the timeline
says will go down or hand over at step ``k + 1`` (or within ``horizon_steps``), wherever another path
exists, so that no traffic is on a link when it changes."""

from __future__ import annotations

import numpy as np

from topologies.errors import ConfigError
from topologies.timeline import Reason, Snapshot, Timeline

from .base import RouteTable, RoutingProtocol, destinations, register
from .graph import METRICS, LinkGraph, build_graph, next_hops


def doomed_links(timeline: Timeline, step: int, snapshot: Snapshot, horizon_steps: int = 1) -> np.ndarray:
    """Links up in ``snapshot`` that go down or change peer within the next ``horizon_steps`` steps.

    Returns
    -------
    ndarray, shape (n_links,), bool
        False everywhere at the last step of the timeline (nothing is known beyond it).
    """
    last = min(step + horizon_steps, timeline.n_steps - 1)
    doomed = np.zeros(timeline.n_links, bool)
    if last <= step:
        return doomed
    future_state = timeline.state[:, step + 1:last + 1]
    future_peer = timeline.peer[:, step + 1:last + 1]
    changes = ((future_state != Reason.UP) | (future_peer != snapshot.peer[:, None])).any(axis=1)
    return snapshot.up & changes


@register
class Predictive(RoutingProtocol):
    """Shortest delay, moved off links before their planned handover or outage (make before break)."""

    name = "predictive"

    def __init__(self, all_loopbacks: bool | None = None, horizon_steps: int = 1, metric: str = "delay") -> None:
        """
        Parameters
        ----------
        all_loopbacks : bool, optional
            See :func:`routing.base.destinations`.
        horizon_steps : int
            How many steps ahead a change makes a link avoided (>= 1; 1 = the next step only).
        metric : {"delay", "hops"}
            Path weight.
        """
        super().__init__(all_loopbacks)
        if not isinstance(horizon_steps, int) or not 1 <= horizon_steps <= 1000:
            raise ConfigError(f"predictive horizon_steps must be an integer in [1, 1000], got {horizon_steps!r}",
                              key="routing.horizon_steps")
        if metric not in METRICS:
            raise ConfigError(f"predictive metric must be one of {', '.join(METRICS)}, got {metric!r}",
                              key="routing.metric")
        self.horizon_steps = horizon_steps
        self.metric = metric

    def compute(self, timeline: Timeline, step: int, snapshot: Snapshot | None = None) -> RouteTable:
        """Shortest paths where every doomed link (:func:`doomed_links`) costs a penalty larger than
        any path: a path that avoids them all is taken if one exists, else one over as few doomed
        links as possible. One Dijkstra run, so the table is a shortest-path tree (loop-free).
        ``dist`` is the path weight without the penalties."""
        snap = snapshot if snapshot is not None else timeline.snapshot(step)
        n = len(timeline.nodes)
        dest = destinations(timeline, self.all_loopbacks)
        graph = build_graph(timeline.link_a, snap, n, self.metric)
        doomed = doomed_links(timeline, step, snap, self.horizon_steps)
        if not doomed.any():
            dist, nh, link = next_hops(graph, dest)
            return RouteTable(step, dest, nh, link, dist)
        penalised, penalty = penalise(graph, build_graph(timeline.link_a, _without(snap, doomed), n, self.metric))
        dist, nh, link = next_hops(penalised, dest)
        finite = np.isfinite(dist)
        dist[finite] -= np.floor(dist[finite] / penalty) * penalty
        return RouteTable(step, dest, nh, link, dist)


def _without(snap: Snapshot, links: np.ndarray) -> Snapshot:
    state = snap.state.copy()
    state[links] = Reason.OUTAGE
    return Snapshot(snap.step, state, snap.peer, snap.params)


def penalise(full: LinkGraph, kept: LinkGraph) -> tuple[LinkGraph, float]:
    """``kept``'s edges at their weight, plus the node pairs only ``full`` joins at weight + penalty.

    Between two nodes joined by a doomed and a kept link (two antennas of a gateway on one
    satellite), the kept one is used whatever its weight.

    Returns
    -------
    graph : LinkGraph
    penalty : float
        Added weight, larger than the weight of any simple path of ``full``.
    """
    n = full.n_nodes
    penalty = float(full.weight.sum()) + 1.0
    keys_full = full.src.astype(np.int64) * n + full.dst
    keys_kept = kept.src.astype(np.int64) * n + kept.dst
    extra = ~np.isin(keys_full, keys_kept)
    keys = np.concatenate([keys_kept, keys_full[extra]])
    order = np.argsort(keys, kind="stable")

    def cat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.concatenate([a, b])[order]

    return LinkGraph(n, cat(kept.src, full.src[extra]), cat(kept.dst, full.dst[extra]),
                     cat(kept.link, full.link[extra]), cat(kept.weight, full.weight[extra] + penalty)), penalty
