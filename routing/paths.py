"""Paths over a whole timeline: predicted one-way delay between two nodes at every step, the path
itself at one step, and the path a route table actually installs."""

from __future__ import annotations

import numpy as np

from topologies.timeline import LINK_CLASSES, Timeline

from .base import RouteTable
from .graph import build_graph, next_hops, path, path_delay_ms


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


def class_delays_ms(tl: Timeline, pairs: list[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray]:
    """One-way delay along the least-delay path of each pair at every step, split by link class.

    One graph and one shortest-path run towards all destinations per step.

    Returns
    -------
    dict
        ``(src, dst)`` -> ndarray, shape (n_steps, len(LINK_CLASSES)), float64: the summed one-way delays
        (ms) of the path's links of each class (:data:`topologies.timeline.LINK_CLASSES` order); NaN in
        every column where ``dst`` is unreachable.
    """
    n_cls = len(LINK_CLASSES)
    out = {p: np.full((tl.n_steps, n_cls), np.nan) for p in pairs}
    if not pairs:
        return out
    dests = np.unique(np.array([d for _, d in pairs], np.int64))
    row = {int(d): i for i, d in enumerate(dests)}
    cls = tl.link_class.astype(np.int64)
    n = len(tl.nodes)
    for k in range(tl.n_steps):
        snap = tl.snapshot(k)
        dist, nh, link = next_hops(build_graph(tl.link_a, snap, n), dests)
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
            arr[k] = np.bincount(cls[li], weights=snap.params[li, 0].astype(np.float64), minlength=n_cls)
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


__all__ = ["class_delays_ms", "next_hops", "path_delays_ms", "shortest_path", "table_path"]
