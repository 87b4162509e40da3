"""Equal-cost multipath routing: every router spreads traffic over up to ``max_paths`` next hops
that lie on shortest paths (the kernel installs them as one multipath route).

Which next hops count as equal
------------------------------
Distances ``dist[d, u]`` from every node ``u`` to every destination ``d`` come from one Dijkstra run
(:func:`routing.graph.next_hops`) with the chosen metric. A neighbour ``v`` of ``u`` (edge weight
``w``) is an equal-cost next hop towards ``d`` when

* ``w + dist[d, v] <= dist[d, u] + tolerance`` (the path through ``v`` is at most ``tolerance``
  longer than the shortest), and
* ``dist[d, v] < dist[d, u]`` (``v`` is strictly closer to ``d``, so following any mix of the chosen
  next hops can never loop).

With the default metric ``"hops"`` (every link costs 1, as in OSPF with unit costs) and tolerance 0 this
is classic ECMP: on a +Grid, a destination a few planes and slots away has many equal-hop paths. With
``metric="delay"`` and ``tolerance_ms > 0`` paths whose one-way delay is within ``tolerance_ms`` of the
best one are used too. The next hops of a (destination, router) pair are ordered by path weight
(cheapest first; with tolerance 0 they all weigh the same), then by neighbour node index; when there
are more than ``max_paths``, the first ``max_paths`` are kept.
"""

from __future__ import annotations

import numpy as np

from topologies.errors import ConfigError
from topologies.timeline import Snapshot, Timeline

from .base import RouteTable, RoutingProtocol, destinations, register
from .graph import METRICS, LinkGraph, build_graph, next_hops

#: Relative slack on comparisons of path weights: link delays are float32 (about 7 digits), so two
#: paths of equal delay can differ by a few 1e-7 relative once summed. Far below one hop of the hop
#: metric and below the 1 us that delays are known to.
_REL_EPS = 1e-6


def equal_cost_next_hops(graph: LinkGraph, dist: np.ndarray, max_paths: int,
                         tolerance: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``max_paths`` loop-free next hops per (destination, node) within ``tolerance``.

    Parameters
    ----------
    graph : LinkGraph
    dist : ndarray, shape (n_dest, n_nodes)
        Path weights to each destination on ``graph`` (from :func:`routing.graph.next_hops`).
    max_paths : int
        ``k``, most next hops kept per pair (>= 1).
    tolerance : float
        Slack on the path weight, in the graph's weight unit (ms for the delay metric, hops for
        the hop metric).

    Returns
    -------
    next_hop, link : ndarray, shape (n_dest, n_nodes, max_paths), int32
        Next-hop nodes and the link slots carrying them, -1 padded at the end of each row.
    """
    n_dest, n = dist.shape
    nh_out = np.full((n_dest, n, max_paths), -1, np.int32)
    link_out = np.full((n_dest, n, max_paths), -1, np.int32)
    if n_dest == 0 or len(graph.src) == 0:
        return nh_out, link_out
    src, dst, w = graph.src, graph.dst, graph.weight
    du = dist[:, src]  # (n_dest, n_edges); inf where unreachable
    dv = dist[:, dst]
    cost = dv + w[None, :]
    # dv < du excludes unreachable v (inf < x is false); an unreachable u has no reachable neighbour
    ok = (dv < du) & (cost <= du * (1.0 + _REL_EPS) + (_REL_EPS + tolerance))
    del du, dv
    flat = np.flatnonzero(ok)
    di, ei = np.divmod(flat, len(src))
    # graph edges are sorted by (src, dst): candidates come grouped by (destination, src) already
    key = di * n + src[ei]
    if tolerance > 0:  # costs differ: cheapest first (stable: then by neighbour index)
        order = np.lexsort((cost.ravel()[flat], key))
        di, ei, key = di[order], ei[order], key[order]
    first = np.ones(len(key), bool)
    first[1:] = key[1:] != key[:-1]
    pos = np.arange(len(key))
    rank = pos - np.maximum.accumulate(np.where(first, pos, 0))
    keep = rank < max_paths
    di, ei, rank = di[keep], ei[keep], rank[keep]
    nh_out[di, src[ei], rank] = dst[ei]
    link_out[di, src[ei], rank] = graph.link[ei]
    return nh_out, link_out


@register
class Ecmp(RoutingProtocol):
    """Equal-cost multipath: up to k loop-free shortest-path next hops per route (default: equal hop count)."""

    name = "ecmp"

    def __init__(self, all_loopbacks: bool | None = None, max_paths: int = 4, metric: str = "hops",
                 tolerance_ms: float = 0.0) -> None:
        """
        Parameters
        ----------
        all_loopbacks : bool, optional
            See :func:`routing.base.destinations`.
        max_paths : int
            Most next hops per route, 1..32 (the kernel accepts more; 32 keeps tables small).
        metric : {"hops", "delay"}
            Path weight.
        tolerance_ms : float
            With ``metric="delay"``: paths at most this much longer (one-way, ms) than the shortest
            count as equal. Must be 0 with ``metric="hops"``.
        """
        super().__init__(all_loopbacks)
        if not isinstance(max_paths, int) or not 1 <= max_paths <= 32:
            raise ConfigError(f"ecmp max_paths must be an integer in [1, 32], got {max_paths!r}",
                              key="routing.max_paths")
        if metric not in METRICS:
            raise ConfigError(f"ecmp metric must be one of {', '.join(METRICS)}, got {metric!r}",
                              key="routing.metric")
        if not (isinstance(tolerance_ms, (int, float)) and 0 <= tolerance_ms <= 1000):
            raise ConfigError(f"ecmp tolerance_ms must be in [0, 1000] ms, got {tolerance_ms!r}",
                              key="routing.tolerance_ms")
        if metric == "hops" and tolerance_ms:
            raise ConfigError("ecmp tolerance_ms applies to metric 'delay' only", key="routing.tolerance_ms")
        self.max_paths = max_paths
        self.metric = metric
        self.tolerance_ms = float(tolerance_ms)

    def compute(self, timeline: Timeline, step: int, snapshot: Snapshot | None = None) -> RouteTable:
        snap = snapshot if snapshot is not None else timeline.snapshot(step)
        graph = build_graph(timeline.link_a, snap, len(timeline.nodes), self.metric)
        dest = destinations(timeline, self.all_loopbacks)
        dist, _, _ = next_hops(graph, dest)
        mp_nh, mp_link = equal_cost_next_hops(graph, dist, self.max_paths, self.tolerance_ms)
        return RouteTable(step, dest, mp_nh[:, :, 0].copy(), mp_link[:, :, 0].copy(), dist,
                          mp_next_hop=mp_nh, mp_link=mp_link)
