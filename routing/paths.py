"""Paths over a whole timeline: predicted one-way delay between two nodes at every step, the path
itself at one step, and the path a route table actually installs."""

from __future__ import annotations

import numpy as np

from topologies.timeline import LINK_CLASSES, Timeline

from .base import RouteTable
from .graph import build_graph, next_hops, path, path_delay_ms, reweighted


def path_delays_ms(tl: Timeline, src: int, dst: int, metric: str = "delay") -> np.ndarray:
    """One-way delay (ms) along the shortest path from ``src`` to ``dst`` at every step.

    Returns
    -------
    ndarray, shape (n_steps,), float64
        Sum of the link delays along the path (the metric only chooses the path); NaN where
        ``dst`` is unreachable.
    """
    out = np.full(tl.n_steps, np.nan)
    n = len(tl.nodes)
    for k in range(tl.n_steps):
        snap = tl.snapshot(k)
        _, links, w = path(build_graph(tl.link_a, snap, n, metric), src, dst)
        if np.isfinite(w):
            out[k] = path_delay_ms(snap, links)
    return out


def access_delays_ms(tl: Timeline) -> np.ndarray:
    """Access delay (scheduling and framing, beyond propagation) inside each link slot's one-way delay.

    Returns
    -------
    ndarray, shape (n_links,), float64
        ms: the ``access_delay_ms`` of the ground end (``link_a``: a gateway or user terminal) for
        ground-to-satellite slots, 0 for every other link and for timelines planned before it existed.
    """
    gsl = np.flatnonzero(tl.link_class == LINK_CLASSES.index("gsl"))
    per_node = np.array([float(n.info.get("access_delay_ms", 0.0)) for n in tl.nodes], np.float64)
    out = np.zeros(len(tl.link_a), np.float64)
    out[gsl] = per_node[np.asarray(tl.link_a, np.int64)[gsl]]
    return out


def class_delays_ms(tl: Timeline, pairs: list[tuple[int, int]], factor: np.ndarray | None = None,
                    access_ms: np.ndarray | None = None) -> dict[tuple[int, int], np.ndarray]:
    """One-way delay along the least-delay path of each pair at every step, split by link class.

    One graph and one shortest-path run towards all destinations per step.

    Parameters
    ----------
    factor : ndarray, shape (n_links,), optional
        Per link slot, a factor on its delay when choosing the path (not in the delays returned): a
        backhaul policy's (:func:`routing.graph.policy_factors`).
    access_ms : ndarray, shape (n_links,), optional
        The part of each link's delay that is access delay (:func:`access_delays_ms`): taken out of its
        class and returned in one more column.

    Returns
    -------
    dict
        ``(src, dst)`` -> ndarray, shape (n_steps, len(LINK_CLASSES)) (one more column, access, with
        ``access_ms``), float64: the summed one-way delays (ms) of the path's links of each class
        (:data:`topologies.timeline.LINK_CLASSES` order); NaN in every column where ``dst`` is unreachable.
    """
    n_cls = len(LINK_CLASSES)
    n_col = n_cls + (access_ms is not None)
    out = {p: np.full((tl.n_steps, n_col), np.nan) for p in pairs}
    if not pairs:
        return out
    dests = np.unique(np.array([d for _, d in pairs], np.int64))
    row = {int(d): i for i, d in enumerate(dests)}
    cls = tl.link_class.astype(np.int64)
    n = len(tl.nodes)
    for k in range(tl.n_steps):
        snap = tl.snapshot(k)
        graph = build_graph(tl.link_a, snap, n)
        if factor is not None:
            graph = reweighted(graph, factor)
        dist, nh, link = next_hops(graph, dests)
        for (src, dst), arr in out.items():
            r = row[dst]
            if not np.isfinite(dist[r, src]):
                continue
            links = []
            v = src
            while v != dst:
                links.append(int(link[r, v]))
                v = int(nh[r, v])
            li = np.asarray(links, np.int64)
            d = snap.params[li, 0].astype(np.float64)
            if access_ms is None:
                arr[k] = np.bincount(cls[li], weights=d, minlength=n_cls)
            else:
                acc = np.where(snap.peer[li] >= 0, access_ms[li], 0.0)
                arr[k, :n_cls] = np.bincount(cls[li], weights=d - acc, minlength=n_cls)
                arr[k, n_cls] = acc.sum()
    return out


def shortest_path(tl: Timeline, src: int, dst: int, step: int, metric: str = "delay") -> list[int]:
    """Node indices of the shortest path at ``step`` (empty if unreachable)."""
    nodes, _, _ = path(build_graph(tl.link_a, tl.snapshot(step), len(tl.nodes), metric), src, dst)
    return nodes


def table_path(table: RouteTable, src: int, dst: int, max_hops: int = 10_000) -> tuple[list[int], list[int]]:
    """Follow a route table's next hops from ``src`` to ``dst``: (nodes, links); empty if no route.

    Raises
    ------
    ValueError
        The table loops (a next hop revisits a node).
    """
    rows = np.flatnonzero(table.destinations == dst)
    if not len(rows):
        return [], []
    r = rows[0]
    nodes, links = [src], []
    v = src
    seen = {src}
    while v != dst:
        nh = int(table.next_hop[r, v])
        if nh < 0:
            return [], []
        links.append(int(table.link[r, v]))
        v = nh
        if v in seen or len(nodes) > max_hops:
            raise ValueError(f"route table of step {table.step} loops at node {v} towards {dst}")
        seen.add(v)
        nodes.append(v)
    return nodes, links


__all__ = ["access_delays_ms", "class_delays_ms", "next_hops", "path_delays_ms", "shortest_path", "table_path"]
