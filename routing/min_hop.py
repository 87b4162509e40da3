"""Min-hop routing: every router forwards on a path of fewest hops; among those, the least delay."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from topologies.timeline import Snapshot, Timeline

from .base import RouteTable, RoutingProtocol, destinations, register
from .graph import LinkGraph, build_graph, next_hops


def hop_weighted(graph: LinkGraph) -> LinkGraph:
    """``graph`` (delay-weighted) re-weighted so that fewer hops always win and delay breaks ties.

    Each edge weighs ``1 + delay * s`` with ``s = 0.5 / (sum of all edge weights + 1)``: the delay
    term of any simple path stays below 0.5, less than one hop, so a path with fewer hops is always
    lighter, and among paths with equally many hops the one of least delay is.
    """
    scale = 0.5 / (float(graph.weight.sum()) + 1.0)
    return replace(graph, weight=1.0 + graph.weight * scale)


@register
class MinHop(RoutingProtocol):
    """Fewest hops on the up links of each snapshot (ties: least delay)."""

    name = "min-hop"

    def compute(self, timeline: Timeline, step: int, snapshot: Snapshot | None = None) -> RouteTable:
        """Route table of ``step``; ``dist`` is the hop count plus a tie-break fraction below 0.5
        (``np.rint(dist)`` is the number of hops)."""
        return self.compute_for(timeline, step, snapshot)

    def compute_for(self, timeline: Timeline, step: int, snapshot: Snapshot | None = None,
                    wanted: np.ndarray | None = None) -> RouteTable:
        """:meth:`compute`'s table with only the rows of the destinations among node indices ``wanted``
        (None: all), each the full table's row."""
        snap = snapshot if snapshot is not None else timeline.snapshot(step)
        graph = hop_weighted(build_graph(timeline.link_a, snap, len(timeline.nodes), "delay"))
        dest = destinations(timeline, self.all_loopbacks)
        if wanted is not None:
            dest = dest[np.isin(dest, wanted)]
        dist, nh, link = next_hops(graph, dest)
        return RouteTable(step, dest, nh, link, np.asarray(dist, np.float64))
