"""An example satnetem routing protocol, packaged and registered the way a user would do it.

``example-random-tiebreak`` routes on fewest hops like ``min-hop``, but breaks ties between paths of
equally many hops with a seeded random weight per link slot instead of by delay. On a +Grid many
paths have the same hop count; shortest-delay and min-hop put all of them on the same few links,
this spreads the routes of different destinations over them. The draw is fixed per link slot
(``seed``), so routes do not flap from one step to the next.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from routing.base import RouteTable, RoutingProtocol, destinations
from routing.graph import build_graph, next_hops
from topologies.errors import ConfigError
from topologies.timeline import Snapshot, Timeline

__all__ = ["RandomTiebreak"]


class RandomTiebreak(RoutingProtocol):
    """Fewest hops; ties broken by a seeded random weight per link slot (spreads routes over equal paths)."""

    name = "example-random-tiebreak"

    def __init__(self, all_loopbacks: bool | None = None, seed: int = 0) -> None:
        super().__init__(all_loopbacks)
        if not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"example-random-tiebreak seed must be an integer >= 0, got {seed!r}",
                              key="routing.seed")
        self.seed = seed

    def compute(self, timeline: Timeline, step: int, snapshot: Snapshot | None = None) -> RouteTable:
        snap = snapshot if snapshot is not None else timeline.snapshot(step)
        n_nodes = len(timeline.nodes)
        graph = build_graph(timeline.link_a, snap, n_nodes, metric="hops")  # 1 per hop
        # A path has fewer than n_nodes hops, so jitter below 0.5 / n_nodes per hop adds up to less
        # than half a hop: fewer hops always win, the draw only decides among equals.
        jitter = np.random.default_rng(self.seed).random(timeline.n_links) * (0.5 / n_nodes)
        graph = replace(graph, weight=graph.weight + jitter[graph.link])
        dest = destinations(timeline, self.all_loopbacks)
        dist, next_hop, link = next_hops(graph, dest)
        return RouteTable(step, dest, next_hop, link, dist)
