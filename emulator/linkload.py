"""Bytes through every shaped link, step by step, read from the kernel's interface counters.

Each link slot's veth pairs have their near end (``link_a``'s side) in one namespace for the whole run: the
near end's transmit bytes are what went from ``a`` to ``b``, its receive bytes what came back. A spare pair
is remade at its next satellite (emulator/spares.py; a clustered run's part moves it, or remakes it across
hosts), which starts its counters again from zero: so each end's counters are followed on their own, and a
reading below the last one counts from zero (a remade pair is down, and carries nothing, until its handover,
after which the counters only grow). A sample is one RTM_GETSTATS
dump (only the 64-bit link statistics, ~200 bytes per interface, not the ~1.5 kB of a full RTM_GETLINK
answer) per namespace that holds near ends, not one request per link.

:class:`LinkCounters` is driven by the runner after each step; ``linkload.csv`` gets, per sample, the
links that carried anything since the previous sample: ``step`` (the step in force over that interval),
``interval_s``, ``link``, ``bytes_ab``, ``bytes_ba``. :func:`link_utilisation` turns the file into
utilisation against the timeline's rates.
"""

from __future__ import annotations

import csv
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import rtnl

RTM_GETSTATS = 94
IFLA_STATS_LINK_64 = 1
_STATS_REQ = struct.Struct("=BBHII")  # struct if_stats_msg: family, pad1, pad2, ifindex, filter_mask
_ATTR = struct.Struct("=HH")
_BYTES = struct.Struct("=QQ")  # rtnl_link_stats64 from offset 16: rx_bytes, tx_bytes
COLUMNS = ("step", "t_unix_s", "interval_s", "link", "bytes_ab", "bytes_ba")


def parse_stats(answers: list[tuple[int, bytes]]) -> dict[int, tuple[int, int]]:
    """ifindex -> (rx_bytes, tx_bytes) from RTM_NEWSTATS answers."""
    out = {}
    for _type, msg in answers:
        if len(msg) < _STATS_REQ.size:
            continue
        ifindex = _STATS_REQ.unpack_from(msg, 0)[3]
        off = _STATS_REQ.size
        while off + _ATTR.size <= len(msg):
            length, kind = _ATTR.unpack_from(msg, off)
            if length < _ATTR.size:
                break
            if kind == IFLA_STATS_LINK_64 and length >= _ATTR.size + 32:
                out[ifindex] = _BYTES.unpack_from(msg, off + _ATTR.size + 16)
            off += (length + 3) & ~3
    return out


class LinkCounters:
    """Byte counters of every link slot's near ends built here (both veth pairs of an antenna summed).

    Parameters
    ----------
    emu : emulator.network.Emulation
        A built emulation (its node namespaces, link ends and addressing are read).
    """

    def __init__(self, emu: Any) -> None:
        addr = emu.addr
        self.n_links = len(emu.link_a)
        near = np.asarray(emu.link_a, np.int64)
        ends = [(near, np.arange(self.n_links), np.asarray(addr.ifindex_a, np.int64))]
        spare = np.flatnonzero(addr.has_spare)
        if len(spare):
            ends.append((near[spare], spare, np.asarray(addr.spare_ifindex_a, np.int64)[spare]))
        node = np.concatenate([e[0] for e in ends])
        link = np.concatenate([e[1] for e in ends])
        ifindex = np.concatenate([e[2] for e in ends])
        # on a host of a clustered run, the near ends built here (a link's near end is on one host only: every
        # host's file together counts each link once)
        here = np.asarray(emu.local, bool)[node]
        node, link, ifindex = node[here], link[here], ifindex[here]
        self._by_ns: list[tuple[rtnl.Rtnl, dict[int, int]]] = []
        for ns in np.unique(node).tolist():
            sel = node == ns
            nd = emu.nodes[ns]
            self._by_ns.append((rtnl.Rtnl(nd.ns_path, nd.name),
                                dict(zip(ifindex[sel].tolist(), link[sel].tolist()))))
        self._request = _STATS_REQ.pack(0, 0, 0, 0, 1 << (IFLA_STATS_LINK_64 - 1))
        self._last: dict[tuple[int, int], tuple[int, int]] = {}  # (namespace #, ifindex) -> (tx, rx) read last
        self._total = np.zeros((self.n_links, 2), np.int64)

    def read(self) -> np.ndarray:
        """Bytes so far per link, shape ``(n_links, 2)``: column 0 sent by ``a`` (a -> b), column 1 received
        by ``a`` (b -> a); counted from the first read, across remade pairs (a counter below its last reading
        started again from zero)."""
        out = self._total
        for i, (conn, links) in enumerate(self._by_ns):
            for ifindex, (rx, tx) in parse_stats(conn.dump(RTM_GETSTATS, self._request)).items():
                k = links.get(ifindex)
                if k is None:
                    continue
                last = self._last.get((i, ifindex))
                self._last[(i, ifindex)] = (tx, rx)
                if last is None:  # first sight: counted from here, as before any read
                    out[k, 0] += tx
                    out[k, 1] += rx
                    continue
                out[k, 0] += tx - last[0] if tx >= last[0] else tx
                out[k, 1] += rx - last[1] if rx >= last[1] else rx
        return out.copy()

    def close(self) -> None:
        for conn, _ in self._by_ns:
            conn.close()
        self._by_ns = []


class LinkLoadLog:
    """Samples :class:`LinkCounters` after each step and appends the non-zero differences to ``linkload.csv``."""

    def __init__(self, counters: LinkCounters, path: Path) -> None:
        self.counters = counters
        self._f = open(path, "w", newline="")  # noqa: SIM115 - closed by close()
        self._w = csv.writer(self._f)
        self._w.writerow(COLUMNS)
        self._last = counters.read()
        self._last_t = time.monotonic()
        self._step = 0

    def sample(self, step: int) -> None:
        """Record what went through since the last sample (then: step ``self._step`` was in force)."""
        now = self.counters.read()
        t = time.monotonic()
        d = now - self._last
        moved = np.flatnonzero(d.any(axis=1))
        interval = t - self._last_t
        stamp = f"{time.time():.3f}"
        for k in moved.tolist():
            self._w.writerow([self._step, stamp, f"{interval:.4f}", k, int(d[k, 0]), int(d[k, 1])])
        self._f.flush()
        self._last, self._last_t, self._step = now, t, step

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
        self.counters.close()


def read_linkload(path: Path) -> list[tuple[int, float, int, int, int]]:
    """(step, interval_s, link, bytes_ab, bytes_ba) rows of ``linkload.csv`` (a cut last line is dropped)."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            try:
                rows.append((int(r["step"]), float(r["interval_s"]), int(r["link"]), int(r["bytes_ab"]),
                             int(r["bytes_ba"])))
            except (KeyError, TypeError, ValueError):
                break
    return rows


def link_utilisation(path: Path, rate_mbps: np.ndarray, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Carried rate and utilisation per link, direction and step.

    Parameters
    ----------
    path : Path
        ``linkload.csv``.
    rate_mbps : ndarray, shape (n_links, n_steps_timeline)
        The timeline's link rates.
    n_steps : int
        Steps to report (the run's played steps).

    Returns
    -------
    mbps : ndarray, shape (n_links, 2, n_steps)
        Carried rate, Mbit/s (bytes over the sample's measured interval), a -> b and b -> a.
    util : ndarray, shape (n_links, 2, n_steps)
        ``mbps`` over the link's rate at that step (NaN where the rate is 0).
    """
    n_links = rate_mbps.shape[0]
    mbps = np.zeros((n_links, 2, n_steps))
    for step, interval_s, link, ab, ba in read_linkload(path):
        if 0 <= step < n_steps and interval_s > 0 and 0 <= link < n_links:
            mbps[link, :, step] += np.array([ab, ba]) * 8 / interval_s / 1e6
    rate = rate_mbps[:, :n_steps][:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        util = np.where(rate > 0, mbps / rate, np.nan)
    return mbps, util
