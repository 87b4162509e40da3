"""Predicted delays and paths: what the physics and the installed routes say a probe should see.

For a centralised protocol the prediction follows the route table the protocol computes at each step
(the routes the emulator installs); for a daemon-driven one (OSPF) the daemons choose, so the
prediction is the shortest-delay path. ``best`` is always the shortest-delay path: the best any
protocol could do, for path stretch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from topologies.timeline import Timeline

from .base import RoutingProtocol, get_protocol
from .graph import build_graph, path, path_delay_ms
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
    n = tl.n_steps if steps is None else min(steps, tl.n_steps)
    out = {p: PairPrediction(np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan),
                             [[] for _ in range(n)]) for p in pairs}
    for k in range(n):
        snap = tl.snapshot(k)
        graph = build_graph(tl.link_a, snap, len(tl.nodes))
        table = proto.compute(tl, k, snap) if centralised else None
        for (a, b), pred in out.items():
            for src, dst, arr, best in ((a, b, pred.forward_ms, pred.best_forward_ms),
                                        (b, a, pred.reverse_ms, pred.best_reverse_ms)):
                nodes_best, links_best, w = path(graph, src, dst)
                if np.isfinite(w):
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
