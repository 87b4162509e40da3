"""Graph algorithms on one snapshot: up links as a sparse graph, shortest paths, next hops.

Pure (numpy and scipy only; no root, no pyroute2). Every up link slot is an edge in both directions
between its near node (``link_a``) and its current peer, weighted by its one-way delay in ms (or by
1 per hop). Shortest paths towards a set of destinations come from one vectorised Dijkstra run on the
reversed graph, started at the destinations: the predecessor of node ``v`` in the tree grown from
destination ``d`` is ``v``'s next hop towards ``d``.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from topologies.errors import ConfigError
from topologies.pops import BACKHAUL_POLICIES
from topologies.timeline import LINK_CLASSES, Snapshot, Timeline

#: Added to every edge weight: scipy treats a stored zero as "no edge" in some paths, and among
#: paths of equal delay the one with fewer hops wins.
HOP_EPSILON = 1e-6
METRICS = ("delay", "hops")


@dataclass(frozen=True)
class LinkGraph:
    """Directed edges of the up links of one snapshot (both directions of each link).

    Arrays have shape (n_edges,), sorted by ``src * n_nodes + dst``. Between two nodes joined by
    several up links (two antennas of a gateway on one satellite), only the lightest is kept.
    """

    n_nodes: int
    src: np.ndarray
    dst: np.ndarray
    link: np.ndarray
    weight: np.ndarray

    def matrix(self) -> csr_matrix:
        """The (n_nodes, n_nodes) weight matrix, ``[u, v]`` = weight of the edge u -> v."""
        return csr_matrix((self.weight, (self.src, self.dst)), shape=(self.n_nodes, self.n_nodes))

    def link_between(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Link index carrying u -> v for each pair (same shapes), -1 where there is none."""
        u = np.asarray(u, np.int64)
        v = np.asarray(v, np.int64)
        keys = self.src.astype(np.int64) * self.n_nodes + self.dst
        q = u * self.n_nodes + v
        pos = np.clip(np.searchsorted(keys, q), 0, max(len(keys) - 1, 0))
        found = (len(keys) > 0) & (u >= 0) & (v >= 0)
        if len(keys):
            found &= keys[pos] == q
        return np.where(found, self.link[pos] if len(keys) else -1, -1)


def build_graph(link_a: np.ndarray, snapshot: Snapshot, n_nodes: int, metric: str = "delay") -> LinkGraph:
    """Graph of the up links of ``snapshot``.

    Parameters
    ----------
    link_a : ndarray, shape (n_links,)
        Near node of each link slot.
    snapshot : Snapshot
        State, peer and params (delay_ms in column 0) of each link slot.
    n_nodes : int
        Number of nodes in the node table.
    metric : {"delay", "hops"}
        Edge weight: one-way delay in ms, or 1 per hop (both plus :data:`HOP_EPSILON`).
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown routing metric {metric!r}; known: {', '.join(METRICS)}", key="metric")
    up = np.flatnonzero(snapshot.up & (snapshot.peer >= 0))
    a = np.asarray(link_a, np.int64)[up]
    b = snapshot.peer[up].astype(np.int64)
    w = (snapshot.params[up, 0].astype(np.float64) if metric == "delay" else np.ones(len(up))) + HOP_EPSILON
    src = np.concatenate([a, b])
    dst = np.concatenate([b, a])
    link = np.concatenate([up, up]).astype(np.int64)
    weight = np.concatenate([w, w])
    keys = src * n_nodes + dst
    order = np.lexsort((link, weight, keys))  # by key, then lightest, then lowest link index
    keys = keys[order]
    first = np.ones(len(keys), bool)
    first[1:] = keys[1:] != keys[:-1]
    keep = order[first]
    return LinkGraph(n_nodes, src[keep], dst[keep], link[keep], weight[keep])


#: Weight factor on the delay of the class a policy avoids: a path with 1 ms less of it beats any path
#: up to ~1 s longer otherwise, so the order is lexicographic on real paths (one-way delays below 1 s).
POLICY_FACTOR = 1000.0


def backhaul_policy(timeline: Timeline) -> str:
    """The ``[backhaul] policy`` of the scenario a timeline was planned from ("least-delay" without one)."""
    policy = (timeline.scenario.get("backhaul") or {}).get("policy", "least-delay")
    if policy not in BACKHAUL_POLICIES:
        raise ConfigError(f"backhaul policy must be one of {', '.join(BACKHAUL_POLICIES)}, got {policy!r}",
                          key="backhaul.policy")
    return str(policy)


def policy_factors(timeline: Timeline, policy: str | None = None) -> np.ndarray | None:
    """Per link slot, the factor a backhaul policy puts on its delay when choosing paths.

    ``"space-first"``: fibre links weigh :data:`POLICY_FACTOR` times their delay, so paths take the least
    fibre (traffic for a PoP rides lasers to the gateway with the shortest fibre to it, normally the one
    nearest the PoP) and, among those, the least delay. ``"ground-first"``: laser links do, so traffic
    leaves the constellation at the gateway it reaches with the least laser delay (through the
    terminal's own satellite when that one sees a gateway) and rides fibre from there. ``"least-delay"``:
    None, plain delay.

    Returns
    -------
    ndarray, shape (n_links,), float64, or None
    """
    policy = policy or backhaul_policy(timeline)
    if policy == "least-delay":
        return None
    avoid = LINK_CLASSES.index("fibre" if policy == "space-first" else "isl")
    return np.where(timeline.link_class == avoid, POLICY_FACTOR, 1.0)


def reweighted(graph: LinkGraph, factor: np.ndarray) -> LinkGraph:
    """``graph`` with each edge's weight multiplied by ``factor`` of its link slot (shape (n_links,))."""
    return LinkGraph(graph.n_nodes, graph.src, graph.dst, graph.link,
                     graph.weight * np.asarray(factor, np.float64)[graph.link])


def next_hops(graph: LinkGraph, destinations: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shortest paths from every node towards each destination.

    Parameters
    ----------
    graph : LinkGraph
    destinations : ndarray, shape (n_dest,)
        Node indices.

    Returns
    -------
    dist : ndarray, shape (n_dest, n_nodes), float64
        Path weight from each node to each destination (ms for the delay metric, hop-epsilon
        included); ``inf`` where unreachable.
    next_hop : ndarray, shape (n_dest, n_nodes), int32
        Next node from each node towards each destination; -1 at the destination and where unreachable.
    link : ndarray, shape (n_dest, n_nodes), int32
        Link slot carrying that hop; -1 where ``next_hop`` is -1.
    """
    destinations = np.asarray(destinations, np.int64)
    n = graph.n_nodes
    if len(destinations) == 0:
        empty = np.empty((0, n))
        return empty, empty.astype(np.int32), empty.astype(np.int32)
    # A destination with one neighbour (a host or compute node behind its access link) is reached by
    # every other node through that neighbour: its tree is the neighbour's plus one hop, so only the
    # neighbour needs a Dijkstra run. With a host behind every gateway this halves the runs, ~1.6 ms
    # each on a 10,744-satellite constellation.
    src_sorted = graph.src.astype(np.int64)
    first = np.searchsorted(src_sorted, destinations)
    deg = np.bincount(src_sorted, minlength=n)
    leaf = deg[destinations] == 1
    nb = np.where(leaf, graph.dst[np.minimum(first, max(len(src_sorted) - 1, 0))], -1).astype(np.int64)
    leaf &= (nb >= 0) & (deg[np.maximum(nb, 0)] > 1)  # two nodes joined only to each other: run both
    nb[~leaf] = -1
    sources = np.unique(np.concatenate([destinations[~leaf], nb[leaf]]))
    dist_s, nh_s, link_s = trees(graph, sources)
    rows = np.searchsorted(sources, np.where(leaf, nb, destinations))
    dist, nh, link = dist_s[rows], nh_s[rows], link_s[rows]
    if leaf.any():
        li = np.flatnonzero(leaf)
        d, g = destinations[li], nb[li]
        w = graph.weight[first[li]]  # the leaf's one edge d -> g; g -> d weighs the same (both directions)
        dist[li] += w[:, None]
        dist[li, d] = 0.0
        nh[li, g] = d
        link[li, g] = graph.link_between(g, d)
        nh[li, d] = -1
        link[li, d] = -1
    return dist, nh, link


#: Where install.sh builds the C shortest-path trees (``routing/dijkstra.c``).
DIJKSTRA_LIBRARY = Path(__file__).resolve().parents[1] / "build" / "libsatnetem-dijkstra.so"
_c_trees: list[Any] = []  # [function or None] once looked for


def _c_dijkstra() -> Any:
    """``satnetem_dijkstra`` from the C library, or None if it is not built (or ``SATNETEM_DIJKSTRA=scipy``
    asks for scipy): then :func:`trees` runs scipy's Dijkstra, the same distances in ~1.7x the time."""
    if not _c_trees:
        fn = None
        if os.environ.get("SATNETEM_DIJKSTRA", "") != "scipy" and DIJKSTRA_LIBRARY.exists():
            fn = ctypes.CDLL(str(DIJKSTRA_LIBRARY)).satnetem_dijkstra
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                           ctypes.c_int32, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                           ctypes.c_void_p]
        _c_trees.append(fn)
    return _c_trees[0]


def route_threads() -> int:
    """Threads of one route computation in C: ``SATNETEM_ROUTE_THREADS``, else half the cores, 1 to 4 (the
    route worker runs beside the step's own thread, the route senders and the delay daemon's shards)."""
    env = os.environ.get("SATNETEM_ROUTE_THREADS", "")
    if env:
        if not env.isdigit() or not 1 <= int(env) <= 64:
            raise ConfigError(f"SATNETEM_ROUTE_THREADS must be an integer in [1, 64], got {env!r}",
                              key="SATNETEM_ROUTE_THREADS")
        return int(env)
    return max(1, min(4, (os.cpu_count() or 1) // 2))


def trees(graph: LinkGraph, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shortest-path trees grown from each of ``sources`` over the reversed graph: row i holds, for every
    node, its path weight to ``sources[i]``, its next hop on that path and the link slot of that hop (-1
    at the source and where unreachable). Shapes (n_sources, n_nodes): float64, int32, int32."""
    n = graph.n_nodes
    sources = np.asarray(sources, np.int64)
    fn = _c_dijkstra()
    if fn is None:
        dist, pred = dijkstra(graph.matrix().T.tocsr(), directed=True, indices=sources, return_predecessors=True)
        nh = np.where(pred < 0, -1, pred).astype(np.int32)
        return dist, nh, graph.link_between(np.broadcast_to(np.arange(n), nh.shape), nh).astype(np.int32)
    # row x of the reversed graph: the edges y -> x, so that the node a tree reaches y from is y's next hop
    order = np.lexsort((graph.src, graph.dst))
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(graph.dst, minlength=n), out=indptr[1:])
    head = np.ascontiguousarray(graph.src[order], np.int32)
    weight = np.ascontiguousarray(graph.weight[order], np.float64)
    tag = np.ascontiguousarray(graph.link[order], np.int32)
    src32 = np.ascontiguousarray(sources, np.int32)
    dist = np.empty((len(sources), n), np.float64)
    nh = np.empty((len(sources), n), np.int32)
    link = np.empty((len(sources), n), np.int32)
    if len(sources) and fn(n, indptr.ctypes.data, head.ctypes.data, weight.ctypes.data, tag.ctypes.data,
                           len(sources), src32.ctypes.data, route_threads(), dist.ctypes.data, nh.ctypes.data,
                           link.ctypes.data) != 0:
        raise MemoryError("shortest-path trees: out of memory")
    return dist, nh, link


def path(graph: LinkGraph, src: int, dst: int) -> tuple[list[int], list[int], float]:
    """Shortest path from ``src`` to ``dst``: (nodes, links, sum of edge weights).

    Returns ``([], [], inf)`` if ``dst`` is unreachable. With the delay metric the weight is the
    one-way delay in ms (plus :data:`HOP_EPSILON` per hop).
    """
    dist, nh, link = next_hops(graph, np.array([dst]))
    if not np.isfinite(dist[0, src]):
        return [], [], float("inf")
    nodes, links = [src], []
    v = src
    while v != dst:
        links.append(int(link[0, v]))
        v = int(nh[0, v])
        nodes.append(v)
    return nodes, links, float(dist[0, src])


def path_delay_ms(snapshot: Snapshot, links: list[int]) -> float:
    """Sum of the one-way delays (ms) of ``links`` in ``snapshot``, without any hop epsilon."""
    return float(snapshot.params[np.asarray(links, np.int64), 0].astype(np.float64).sum())
