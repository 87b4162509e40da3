"""Placement: which host of a cluster runs each node of a timeline, and how many link slots that puts
across hosts.

Pure (numpy, and pymetis for the ``partition`` strategy): no root, no kernel, no network. Every link slot
whose two ends land on different hosts becomes a tunnel over the hosts' underlay (one VXLAN device at each
end, :mod:`emulator.cluster.vxlan`), which costs the underlay's delay and a device pair per slot, so a
placement is judged by those slots.

Strategies (:data:`STRATEGIES`):

``plane`` (default)
    An orbital plane stays on one host. The planes, in (shell, plane) order, are cut into ``n_hosts``
    contiguous runs of about equal node count: in a +Grid only the inter-plane lasers between the last
    plane of one run and the first of the next cross hosts (and the wrap-around between the last plane and
    the first), where spreading planes round-robin would put every inter-plane laser across hosts.
``partition``
    A graph partition by METIS (pymetis): vertices are the nodes, an edge joins every two nodes that a link
    slot ever connects, weighted by the number of steps it does, so that what is linked longest stays
    together; nodes are balanced by count (METIS's default 3 % imbalance).

Nodes that are not satellites of a plane (gateways, terminals, PoPs, hosts, compute nodes, satellites off
the grid) are placed after the planes, with ``ground``:

``follow`` (default)
    On the host of the placed neighbour they are linked to for the most steps (a gateway with the
    satellite its antenna uses most, a host with its gateway, a compute node with its satellite), ties to
    the host with fewest nodes; repeated until every node linked to a placed one is placed.
``balance``
    Each on the host with fewest nodes so far.

A link slot *crosses* when, at some step, its near end (``link_a``) and its far end (``peer``, when it
has one) are on different hosts; each such slot is counted once however often it crosses
(:func:`cross_host_links`). Link state (up or down) does not matter: the emulator builds the link of a
slot with a far end whether or not it carries traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from topologies.errors import ConfigError
from topologies.timeline import Timeline

STRATEGIES = ("plane", "partition")
GROUND_MODES = ("follow", "balance")


@dataclass(frozen=True)
class CrossCount:
    """Link slots across hosts under one placement.

    Attributes
    ----------
    slots : np.ndarray
        (k,) int64, the link slots that cross hosts at some step, ascending.
    per_step : np.ndarray
        (n_steps,) int64, slots across hosts at each step.
    """

    slots: np.ndarray
    per_step: np.ndarray

    @property
    def total(self) -> int:
        """Slots that ever cross (each counted once)."""
        return len(self.slots)

    @property
    def max_at_once(self) -> int:
        """Most slots across hosts at one step."""
        return int(self.per_step.max()) if len(self.per_step) else 0


@dataclass(frozen=True)
class Placement:
    """Nodes on hosts.

    Attributes
    ----------
    strategy : str
        One of :data:`STRATEGIES`.
    n_hosts : int
    host_of : np.ndarray
        (n_nodes,) int64, the host (0 .. n_hosts - 1) of each node, in node-table order.
    """

    strategy: str
    n_hosts: int
    host_of: np.ndarray

    @property
    def nodes_per_host(self) -> np.ndarray:
        """(n_hosts,) int64: nodes placed on each host."""
        return np.bincount(self.host_of, minlength=self.n_hosts).astype(np.int64)


def _check(n_hosts: int, strategy: str, ground: str) -> None:
    if isinstance(n_hosts, bool) or not isinstance(n_hosts, (int, np.integer)) or n_hosts < 1:
        raise ConfigError(f"the number of hosts must be an integer >= 1, got {n_hosts!r}", key="hosts")
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown placement {strategy!r}; known: {', '.join(STRATEGIES)}", key="placement")
    if ground not in GROUND_MODES:
        raise ConfigError(f"unknown ground placement {ground!r}; known: {', '.join(GROUND_MODES)}",
                          key="ground")


def link_pairs(tl: Timeline) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every two nodes that a link slot ever connects, with the number of steps it does.

    Returns
    -------
    (u, v, steps) : tuple of np.ndarray
        (m,) int64 each, ``u < v``, one row per node pair (slots between the same two nodes added up).
    """
    n = len(tl.nodes)
    a = np.broadcast_to(tl.link_a.astype(np.int64)[:, None], tl.peer.shape)
    b = tl.peer.astype(np.int64)
    has = (b >= 0) & (b != a)
    u = np.minimum(a[has], b[has])
    v = np.maximum(a[has], b[has])
    key, steps = np.unique(u * n + v, return_counts=True)
    return key // n, key % n, steps.astype(np.int64)


def cross_host_links(tl: Timeline, host_of: np.ndarray) -> CrossCount:
    """The link slots of ``tl`` whose ends are on different hosts at some step (see the module docstring).

    Parameters
    ----------
    tl : Timeline
    host_of : np.ndarray
        (n_nodes,) host of each node.
    """
    host_of = np.asarray(host_of, np.int64)
    if host_of.shape != (len(tl.nodes),):
        raise ValueError(f"host_of has shape {host_of.shape}, expected {(len(tl.nodes),)}")
    peer = tl.peer.astype(np.int64)
    cross = (peer >= 0) & (host_of[np.maximum(peer, 0)] != host_of[tl.link_a.astype(np.int64)][:, None])
    return CrossCount(np.flatnonzero(cross.any(axis=1)), cross.sum(axis=0).astype(np.int64))


def place(tl: Timeline, n_hosts: int, strategy: str = "plane", ground: str = "follow",
          seed: int = 0) -> Placement:
    """Assign every node of ``tl`` to one of ``n_hosts`` hosts.

    Parameters
    ----------
    tl : Timeline
    n_hosts : int
        Hosts, >= 1.
    strategy : str
        ``plane`` or ``partition`` (module docstring).
    ground : str
        ``follow`` or ``balance``: where the nodes outside planes go under ``plane``.
    seed : int
        METIS's random seed (``partition``): the same seed gives the same placement.

    Raises
    ------
    ConfigError
        A bad number of hosts or an unknown strategy.
    """
    _check(n_hosts, strategy, ground)
    n = len(tl.nodes)
    if strategy == "partition":
        return Placement(strategy, int(n_hosts), _partition(tl, int(n_hosts), seed))
    host = np.full(n, -1, np.int64)
    load = np.zeros(n_hosts, np.int64)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, nd in enumerate(tl.nodes):
        shell, plane = nd.info.get("shell"), nd.info.get("plane")
        if nd.kind == "sat" and isinstance(plane, int) and plane >= 0 and isinstance(shell, int):
            groups.setdefault((shell, plane), []).append(i)
    keys = sorted(groups)
    sizes = np.array([len(groups[k]) for k in keys], np.int64)
    for g, h in enumerate(_contiguous_runs(sizes, n_hosts)):
        host[groups[keys[g]]] = h
        load[h] += sizes[g]
    if ground == "balance":
        for i in np.flatnonzero(host < 0).tolist():
            h = int(np.argmin(load))
            host[i] = h
            load[h] += 1
    else:
        _follow(tl, host, load)
    return Placement(strategy, int(n_hosts), host)


def _contiguous_runs(sizes: np.ndarray, n_hosts: int) -> np.ndarray:
    """Host of each group when ``len(sizes)`` groups in order are cut into ``n_hosts`` contiguous runs of
    about equal total size: run k ends at the group boundary nearest to (k + 1) / n_hosts of the total,
    every run keeping at least one group while there are groups to give."""
    g = len(sizes)
    out = np.zeros(g, np.int64)
    if g == 0 or n_hosts == 1:
        return out
    if g <= n_hosts:  # a group each
        return np.arange(g, dtype=np.int64)
    cum = np.cumsum(sizes)  # cum[j]: total of groups 0..j
    total = float(cum[-1])
    start = 0
    for k in range(n_hosts - 1):
        left = n_hosts - 1 - k  # runs still to fill after this one
        last = g - 1 - left  # the last group this run may take, leaving one to each later run (>= start)
        target = (k + 1) * total / n_hosts
        cand = np.arange(start, last + 1)
        end = int(cand[np.argmin(np.abs(cum[cand] - target))])
        out[end + 1:] = k + 1
        start = end + 1
    return out


def _follow(tl: Timeline, host: np.ndarray, load: np.ndarray) -> None:
    """Place the unplaced nodes (``host`` -1) with the host they are linked to longest, in rounds; nodes
    linked to no placed node at all go to the least-loaded host. ``host`` and ``load`` change in place."""
    u, v, w = link_pairs(tl)
    su, sv, sw = np.concatenate([u, v]), np.concatenate([v, u]), np.concatenate([w, w])
    n_hosts = len(load)
    while (host < 0).any():
        score = np.zeros((len(host), n_hosts), np.int64)
        ok = (host[su] < 0) & (host[sv] >= 0)
        np.add.at(score, (su[ok], host[sv[ok]]), sw[ok])
        todo = np.flatnonzero((host < 0) & (score.sum(axis=1) > 0))
        if not len(todo):  # linked to nothing placed: balance
            for i in np.flatnonzero(host < 0).tolist():
                h = int(np.argmin(load))
                host[i] = h
                load[h] += 1
            return
        for i in todo.tolist():
            best = np.flatnonzero(score[i] == score[i].max())
            h = int(best[np.argmin(load[best])])
            host[i] = h
            load[h] += 1


def _partition(tl: Timeline, n_hosts: int, seed: int) -> np.ndarray:
    n = len(tl.nodes)
    if n_hosts == 1 or n <= 1:
        return np.zeros(n, np.int64)
    import pymetis  # only this strategy needs it

    u, v, w = link_pairs(tl)
    src, dst, wt = np.concatenate([u, v]), np.concatenate([v, u]), np.concatenate([w, w])
    order = np.lexsort((dst, src))
    src, dst, wt = src[order], dst[order], wt[order]
    xadj = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n))]).astype(np.int64)
    parts = pymetis.part_graph(n_hosts, pymetis.CSRAdjacency(xadj.tolist(), dst.tolist()), eweights=wt.tolist(),
                               options=pymetis.Options(seed=int(seed)))
    return np.asarray(parts.vertex_part, np.int64)


def summary(tl: Timeline, n_hosts: int, ground: str = "follow", seed: int = 0) -> list[dict[str, Any]]:
    """Each strategy's placement of ``tl`` on ``n_hosts`` hosts, as ``plan --hosts --json`` gives it: nodes per
    host, link slots that ever cross hosts and the most at one step."""
    out: list[dict[str, Any]] = []
    for strategy in STRATEGIES:
        p = place(tl, n_hosts, strategy, ground, seed)
        c = cross_host_links(tl, p.host_of)
        out.append({"strategy": strategy, "hosts": int(n_hosts), "nodes_per_host": p.nodes_per_host.tolist(),
                    "cross_host_slots": c.total, "cross_host_max_at_once": c.max_at_once, "link_slots": tl.n_links})
    return out


def describe(tl: Timeline, n_hosts: int, ground: str = "follow", seed: int = 0) -> list[str]:
    """One line per strategy: nodes per host and link slots across hosts (what ``plan --hosts`` prints)."""
    return [describe_one(s) for s in summary(tl, n_hosts, ground, seed)]


def describe_one(s: dict[str, Any]) -> str:
    """One line of :func:`describe` from one entry of :func:`summary`."""
    nodes = "/".join(str(x) for x in s["nodes_per_host"])
    return (f"{s['strategy']} on {s['hosts']} hosts: nodes per host {nodes}, {s['cross_host_slots']} of "
            f"{s['link_slots']} link slots cross hosts (at most {s['cross_host_max_at_once']} at one step)")
