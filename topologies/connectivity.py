"""Connectivity of a timeline: the connected components of the network at every step, and for chosen
endpoint pairs the share of steps in which they can reach each other.

A multi-shell constellation whose shells are not joined by lasers splits into islands that only meet
through the ground; a pair of endpoints can then be connected in some steps and not in others. This is
what ``satnetem plan`` reports before anything is emulated: a pair ever disconnected is a warning that
names the component each end was in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .timeline import Reason, Timeline


@dataclass(frozen=True)
class PairConnectivity:
    """How often two nodes could reach each other over the links that were up.

    ``first_split`` describes the first step at which they could not: the step, and for each end the size
    of its component and the node of that component with the lowest index (a name a user can look up).
    """

    src: str
    dst: str
    connected_steps: int
    n_steps: int
    first_split: dict[str, object] | None = None

    @property
    def connected_fraction(self) -> float:
        return self.connected_steps / self.n_steps if self.n_steps else 0.0

    def warning(self) -> str | None:
        """One line for a pair that was ever disconnected, naming each end's component; else None."""
        if self.first_split is None:
            return None
        f = self.first_split
        return (f"{self.src} and {self.dst} are disconnected in {self.n_steps - self.connected_steps} of "
                f"{self.n_steps} steps; first at step {f['step']}: {self.src} in a component of "
                f"{f['src_size']} nodes with {f['src_member']}, {self.dst} in one of {f['dst_size']} nodes "
                f"with {f['dst_member']}")


@dataclass(frozen=True)
class Connectivity:
    """Per step: number of connected components, size of the largest, nodes with no link up.

    Arrays have shape (n_steps,), int64. Components count every node of the timeline, so a node with no
    link up (a satellite between partners, a gateway with no satellite in view) is a component of one.
    """

    components: np.ndarray
    largest: np.ndarray
    isolated: np.ndarray
    pairs: list[PairConnectivity] = field(default_factory=list)


def step_labels(tl: Timeline, step: int) -> tuple[int, np.ndarray]:
    """Connected components at ``step`` over the links that are up: (count, label per node)."""
    up = tl.state[:, step] == Reason.UP
    a = tl.link_a[up].astype(np.int64)
    b = tl.peer[up, step].astype(np.int64)
    ok = b >= 0
    n = len(tl.nodes)
    m = coo_matrix((np.ones(int(ok.sum()), np.int8), (a[ok], b[ok])), shape=(n, n))
    count, labels = connected_components(m, directed=False)
    return int(count), labels


def connectivity(tl: Timeline, pairs: Sequence[tuple[str, str]] = ()) -> Connectivity:
    """Components at every step of ``tl`` and, for each (src, dst) name pair, the steps they are joined.

    Raises
    ------
    KeyError
        A name in ``pairs`` is not a node of the timeline.
    """
    idx = [(tl.node_index(s), tl.node_index(d)) for s, d in pairs]
    n_steps = tl.n_steps
    components = np.zeros(n_steps, np.int64)
    largest = np.zeros(n_steps, np.int64)
    isolated = np.zeros(n_steps, np.int64)
    joined = np.zeros((len(idx), n_steps), bool)
    first: list[dict[str, object] | None] = [None] * len(idx)
    for k in range(n_steps):
        count, labels = step_labels(tl, k)
        sizes = np.bincount(labels, minlength=count)
        components[k] = count
        largest[k] = sizes.max() if count else 0
        isolated[k] = int(np.sum(sizes == 1))
        for j, (s, d) in enumerate(idx):
            joined[j, k] = labels[s] == labels[d]
            if not joined[j, k] and first[j] is None:
                first[j] = {"step": k,
                            "src_size": int(sizes[labels[s]]), "src_member": _member(tl, labels, labels[s]),
                            "dst_size": int(sizes[labels[d]]), "dst_member": _member(tl, labels, labels[d])}
    out = [PairConnectivity(src, dst, int(joined[j].sum()), n_steps, first[j])
           for j, (src, dst) in enumerate(pairs)]
    return Connectivity(components, largest, isolated, out)


def _member(tl: Timeline, labels: np.ndarray, label: int) -> str:
    return tl.nodes[int(np.argmax(labels == label))].name
