"""A ring all-reduce between compute nodes over the emulated network, timed per round.

One process per node (``python -m emulator.traffic.allreduce ...`` in the node's namespace), rank ``i`` of
``K``: it listens for its ring predecessor and connects over TCP to its successor, rank ``i + 1 mod K``.
Every node holds a float32 vector of ``S`` bytes cut into ``K`` chunks. A round is a reduce-scatter (``K - 1``
steps: send one chunk to the successor, receive one from the predecessor and add it to its own) and an
all-gather (``K - 1`` steps: pass the reduced chunks on), so every node sends ``2 (K - 1) S / K`` bytes and
ends with the element-wise sum of all ``K`` vectors, which it checks against the known answer.

Rounds start together: after a round each node drops a file ``<round>.<rank>`` holding the time it finished
into a shared barrier folder; when all ``K`` are there, every node waits until the latest of those times plus
``START_MARGIN_S`` and starts. The barrier goes through the file system, not the emulated network, so that
what a round's time measures is the all-reduce alone. On one host the ranks share the folder; on a cluster
each host's agent copies its ranks' files into the other hosts' folders (:meth:`emulator.cluster.agent.
HostAgent.start_flows`), the ranks start ``--start-margin`` after the last time, long enough for the copies to
arrive, and each host's clock (checked against the others' at start) reads the common start.

Each node writes ``<node>.csv``: round, start_unix_s (the common start), end_unix_s (its last chunk
received), bytes sent and received, and the largest error of its result. :func:`summarise_allreduce` takes
a round's time as the latest end over nodes minus the common start.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from topologies.errors import ConfigError

from . import CsvLog, read_records, run_program, setup_cli_logging

log = logging.getLogger(__name__)

COLUMNS = ("round", "start_unix_s", "end_unix_s", "bytes_sent", "bytes_received", "max_error")
#: every node starts a round this long after the last node finished the one before: the barrier's files are
#: polled every BARRIER_POLL_S, and a process needs a few ms to be scheduled on a loaded host
START_MARGIN_S = 0.03
BARRIER_POLL_S = 0.002
#: blocking socket calls wake this often to see the stop flag
WAKE_S = 0.5
#: the most a receive waits for before it wakes (the kernel caps SO_RCVLOWAT at half the receive buffer)
RCVLOWAT_MAX = 1 << 20


def chunk_edges(n_floats: int, k: int) -> list[int]:
    """Element offsets of the ``k`` chunks of a vector of ``n_floats`` (sizes differ by at most one)."""
    return [(j * n_floats) // k for j in range(k + 1)]


def initial_vector(n_floats: int, rank: int) -> np.ndarray:
    """Rank ``rank``'s contribution: small integers, so every partial sum is exact in float32."""
    return ((np.arange(n_floats, dtype=np.int64) % 251) + rank).astype(np.float32)


def expected_sum(n_floats: int, k: int) -> np.ndarray:
    """The element-wise sum of the ``k`` ranks' :func:`initial_vector`."""
    return (k * (np.arange(n_floats, dtype=np.int64) % 251) + k * (k - 1) // 2).astype(np.float32)


def ring_schedule(rank: int, k: int) -> list[tuple[str, int, int]]:
    """The ``2 (k - 1)`` steps of rank ``rank``: (phase, chunk sent, chunk received), phase ``reduce`` (the
    received chunk is added) or ``gather`` (it replaces the node's own). After the reduce-scatter rank ``r``
    holds chunk ``r + 1 mod k`` summed over all ranks."""
    steps = [("reduce", (rank - s) % k, (rank - s - 1) % k) for s in range(k - 1)]
    steps += [("gather", (rank + 1 - s) % k, (rank - s) % k) for s in range(k - 1)]
    return steps


class Ring:
    """The two TCP connections of one rank: to its successor (sent on) and from its predecessor (read)."""

    def __init__(self, bind: str, port: int, succ: str, pred: str, deadline: float, stop: threading.Event) -> None:
        self.stop = stop
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind((bind, port))
        lst.listen(4)
        lst.settimeout(0.2)
        self.out: socket.socket | None = None
        self.inp: socket.socket | None = None
        try:
            while (self.out is None or self.inp is None) and not stop.is_set():
                if time.monotonic() > deadline:
                    raise ConfigError(f"ring not formed before the deadline (successor {succ}:{port} "
                                      f"{'reached' if self.out else 'not reached'}, predecessor "
                                      f"{pred} {'connected' if self.inp else 'not connected'})")
                if self.out is None:
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    s.settimeout(1.0)
                    try:
                        s.bind((bind, 0))
                        s.connect((succ, port))
                        self.out = s
                    except OSError:
                        s.close()
                if self.inp is None:
                    try:
                        c, (addr, _) = lst.accept()
                    except TimeoutError:
                        continue
                    if addr != pred:  # only the ring's predecessor feeds this rank
                        log.warning("connection from %s refused: the predecessor is %s", addr, pred)
                        c.close()
                        continue
                    self.inp = c
        finally:
            lst.close()
        for conn in (self.out, self.inp):
            if conn is not None:
                conn.settimeout(None if conn is self.out else WAKE_S)

    def send(self, data: memoryview, errors: list[BaseException]) -> None:
        try:
            assert self.out is not None
            self.out.sendall(data)
        except OSError as e:
            errors.append(e)

    def recv_exact(self, into: memoryview) -> bool:
        """Fill ``into`` from the predecessor; False if stopped or the predecessor closed first."""
        assert self.inp is not None
        got = 0
        while got < len(into):
            if self.stop.is_set():
                return False
            # wake when the rest of the chunk is there, not for every few segments (fewer wake-ups, each a
            # chance to wait for a CPU on a busy host)
            self.inp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, min(len(into) - got, RCVLOWAT_MAX))
            try:
                n = self.inp.recv_into(into[got:])
            except TimeoutError:
                continue
            if n == 0:
                return False
            got += n
        return True

    def close(self) -> None:
        for s in (self.out, self.inp):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


def barrier(folder: Path, rnd: int, rank: int, k: int, deadline: float, stop: threading.Event,
            margin_s: float = START_MARGIN_S) -> float | None:
    """Announce that this rank is ready for round ``rnd``; return the common start time (unix s) once all
    ``k`` ranks are, or None if stopped or past the deadline. The start is ``margin_s`` after the last rank's
    time; a rank that learns of it later starts late, and says so."""
    tmp = folder / f".{rnd}.{rank}.tmp"
    tmp.write_text(repr(time.time()))
    tmp.replace(folder / f"{rnd}.{rank}")  # whole or absent: a reader never sees half a time
    names = [folder / f"{rnd}.{r}" for r in range(k)]
    while not all(p.exists() for p in names):
        if stop.wait(BARRIER_POLL_S) or time.monotonic() > deadline:
            return None
    start = max(float(p.read_text()) for p in names) + margin_s
    if time.time() > start:
        log.warning("round %d: the barrier's last file came %.1f ms after the common start", rnd,
                    (time.time() - start) * 1e3)
    while (left := start - time.time()) > 0:
        if stop.wait(left):
            return None
    return start


def run(args: argparse.Namespace, stop: threading.Event) -> None:
    k, rank = args.ranks, args.rank
    if not 0 <= args.start_margin <= 10:
        raise ConfigError(f"start margin must be in [0, 10] s, got {args.start_margin}", key="start-margin")
    if not 0 <= rank < k or k < 2:
        raise ConfigError(f"rank {rank} of {k} ranks: need 0 <= rank < ranks and ranks >= 2", key="rank")
    n_floats = args.size_bytes // 4
    if n_floats < k:
        raise ConfigError(f"size {args.size_bytes} bytes is less than one float32 per rank", key="size-bytes")
    deadline = time.monotonic() + args.duration
    edges = chunk_edges(n_floats, k)
    init = initial_vector(n_floats, rank)
    want = expected_sum(n_floats, k)
    buf = np.empty_like(init)
    scratch = np.empty(max(edges[j + 1] - edges[j] for j in range(k)), np.float32)
    scratch_b = scratch.data.cast("B")
    steps = ring_schedule(rank, k)
    folder = Path(args.barrier)
    ring = Ring(args.bind, args.port, args.succ, args.pred, deadline, stop)
    try:
        with CsvLog(args.out, COLUMNS) as out:
            for rnd in range(args.rounds):
                start = barrier(folder, rnd, rank, k, deadline, stop, args.start_margin)
                if start is None:
                    return
                buf[:] = init
                sent = received = 0
                for phase, c_send, c_recv in steps:
                    a, b = edges[c_send], edges[c_send + 1]
                    errors: list[BaseException] = []
                    # the send runs beside the receive: both directions of the ring move at once, and a
                    # chunk larger than the sockets' buffers would otherwise deadlock the ring
                    tx = threading.Thread(target=ring.send, args=(buf[a:b].data.cast("B"), errors))
                    tx.start()
                    a2, b2 = edges[c_recv], edges[c_recv + 1]
                    ok = ring.recv_exact(scratch_b[:(b2 - a2) * 4])
                    if not ok:
                        ring.close()  # unblocks the sender
                    tx.join()
                    if not ok or errors:
                        if not stop.is_set():
                            raise OSError(f"round {rnd}: ring broken ({errors[0] if errors else 'peer closed'})")
                        return
                    if phase == "reduce":
                        buf[a2:b2] += scratch[:b2 - a2]
                    else:
                        buf[a2:b2] = scratch[:b2 - a2]
                    sent += (b - a) * 4
                    received += (b2 - a2) * 4
                end = time.time()
                err = float(np.max(np.abs(buf - want)))
                out.row([rnd, f"{start:.6f}", f"{end:.6f}", sent, received, f"{err:g}"])
                out.flush()
            # the last barrier: no rank closes its sockets while its successor still reads from them
            barrier(folder, args.rounds, rank, k, deadline, stop, args.start_margin)
    finally:
        ring.close()


def summarise_allreduce(folder: Path) -> dict[str, Any]:
    """Round times of an all-reduce flow from its folder (``allreduce.json`` and one CSV per node).

    Returns
    -------
    dict
        ``nodes``, ``size_mb``, ``rounds_planned``, ``rounds`` (completed by every node), ``round_s`` (per
        round: the latest end over nodes minus the common start, s), ``round_start_unix_s`` (that start),
        ``round_s_p50``/``round_s_p95``/``round_s_max``, ``correct`` (every node's result equals the sum)
        and ``busbw_mbps`` (the bandwidth a link of the ring carried: ``2 (K - 1) / K x S`` over the median
        round).

    Raises
    ------
    ConfigError
        ``allreduce.json`` missing or a node's file unreadable.
    """
    meta_file = folder / "allreduce.json"
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the all-reduce's description: {e}", file=str(meta_file)) from None
    conv = {"round": int, "start_unix_s": float, "end_unix_s": float, "max_error": float}
    per_node = [read_records(folder / meta["files"][n], conv) for n in meta["nodes"]]
    done = min((len(r) for r in per_node), default=0)
    times, starts, correct = [], [], True
    for rnd in range(done):
        rows = [r[rnd] for r in per_node]
        starts.append(min(x["start_unix_s"] for x in rows))
        times.append(max(x["end_unix_s"] for x in rows) - starts[-1])
        correct &= all(x["max_error"] == 0 for x in rows)
    k, size_b = len(meta["nodes"]), meta["size_bytes"]
    out: dict[str, Any] = {"nodes": meta["nodes"], "size_mb": size_b / 1e6, "rounds_planned": meta["rounds"],
                           "rounds": done, "round_s": [round(t, 4) for t in times],
                           "round_start_unix_s": [round(t, 4) for t in starts], "correct": correct and done > 0}
    if times:
        p50 = float(np.median(times))
        out.update({"round_s_p50": round(p50, 4), "round_s_p95": round(float(np.percentile(times, 95)), 4),
                    "round_s_max": round(max(times), 4),
                    "busbw_mbps": round(2 * (k - 1) / k * size_b * 8 / p50 / 1e6, 2)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="allreduce", description=__doc__.split("\n")[0])
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--ranks", type=int, required=True)
    p.add_argument("--bind", required=True, help="this node's address")
    p.add_argument("--port", type=int, required=True, help="every rank listens on this port")
    p.add_argument("--succ", required=True, help="the successor's address")
    p.add_argument("--pred", required=True, help="the predecessor's address")
    p.add_argument("--size-bytes", type=int, required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--duration", type=float, required=True, help="give up after this many seconds")
    p.add_argument("--barrier", required=True, help="folder shared by the ranks")
    p.add_argument("--start-margin", type=float, default=START_MARGIN_S,
                   help="a round starts this long after the last rank finished the one before, s")
    p.add_argument("--out", required=True)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_cli_logging(args.verbose)
    return run_program("allreduce", lambda stop: run(args, stop))


if __name__ == "__main__":
    raise SystemExit(main())
