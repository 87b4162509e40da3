"""Shortest-delay routing: every router forwards on the path of least one-way propagation delay."""

from __future__ import annotations

import numpy as np

from topologies.timeline import Snapshot, Timeline

from .base import RouteTable, RoutingProtocol, destinations, register
from .graph import build_graph, next_hops, policy_factors, reweighted


@register
class ShortestDelay(RoutingProtocol):
    """Dijkstra on the up links of each snapshot, weighted by delay_ms (ties: fewer hops).

    With a ``[backhaul] policy`` other than least-delay, fibre (space-first) or laser (ground-first) links
    weigh :data:`routing.graph.POLICY_FACTOR` times their delay.
    """

    name = "shortest-delay"
    metric = "delay"

    def compute(self, timeline: Timeline, step: int, snapshot: Snapshot | None = None) -> RouteTable:
        return self.compute_for(timeline, step, snapshot)

    def compute_for(self, timeline: Timeline, step: int, snapshot: Snapshot | None = None,
                    wanted: np.ndarray | None = None) -> RouteTable:
        """:meth:`compute`'s table with only the rows of the destinations among node indices ``wanted``
        (None: all), each the full table's row (a destination's tree does not depend on the others)."""
        snap = snapshot if snapshot is not None else timeline.snapshot(step)
        graph = build_graph(timeline.link_a, snap, len(timeline.nodes), self.metric)
        factor = policy_factors(timeline)  # [backhaul] policy: space-first / ground-first
        if factor is not None:
            graph = reweighted(graph, factor)
        dest = destinations(timeline, self.all_loopbacks)
        if wanted is not None:
            dest = dest[np.isin(dest, wanted)]
        dist, nh, link = next_hops(graph, dest)
        return RouteTable(step, dest, nh, link, dist)
