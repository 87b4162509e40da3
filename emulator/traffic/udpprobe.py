"""UDP probe: sequence-numbered, timestamped datagrams for one-way delay, loss and reordering.

Every node of the emulation runs on one machine, so the sender's and the receiver's CLOCK_REALTIME
are the same clock and ``recv_ns - sent_ns`` is the one-way delay. The receiver takes the kernel's
receive timestamp (``SO_TIMESTAMPNS``), so the Python loop's scheduling latency is not counted.

Usage (inside a node's namespace)::

    python -m emulator.traffic.udpprobe recv --bind 10.0.0.2 --port 5001 --duration 12 --out recv.csv
    python -m emulator.traffic.udpprobe send --dst 10.0.0.2 --port 5001 --rate-pps 50 --size 64 \\
        --duration 10 --flow 1 --out sent.csv

Datagram payload (network byte order, then zero padding up to ``--size`` bytes of UDP payload)::

    magic b"SN" (2 bytes) | flow u16 | seq u32 | sent_ns u64     (16 bytes)

Records: the sender writes ``flow,seq,sent_ns`` per datagram it tried to send (a send that the kernel
refused, e.g. no route, is recorded too: it is a lost packet); the receiver writes
``flow,seq,sent_ns,recv_ns`` per datagram received. Start the receiver before and stop it after the
sender (by about the largest one-way delay), or the last datagrams count as lost.
"""

from __future__ import annotations

import argparse
import logging
import math
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from topologies.errors import ConfigError

from . import CsvLog, deadline_after, read_records, run_program, setup_cli_logging

log = logging.getLogger(__name__)

MAGIC = b"SN"
HEADER = struct.Struct("!2sHIQ")
HEADER_BYTES = HEADER.size  # 16
MAX_PAYLOAD_BYTES = 65507
SENT_COLUMNS = ("flow", "seq", "sent_ns")
RECV_COLUMNS = ("flow", "seq", "sent_ns", "recv_ns")
# Linux's SO_TIMESTAMPNS (asm-generic/socket.h); the ancillary data is a struct timespec
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")
_POLL_S = 0.2


def encode(flow: int, seq: int, sent_ns: int, size_bytes: int) -> bytes:
    """Build one probe payload of ``size_bytes`` bytes (>= 16)."""
    head = HEADER.pack(MAGIC, flow, seq & 0xFFFFFFFF, sent_ns)
    return head + bytes(max(0, size_bytes - HEADER_BYTES))


def decode(payload: bytes) -> tuple[int, int, int] | None:
    """``(flow, seq, sent_ns)`` of a probe payload, or None if it is not one of ours."""
    if len(payload) < HEADER_BYTES:
        return None
    magic, flow, seq, sent_ns = HEADER.unpack_from(payload)
    if magic != MAGIC:
        return None
    return flow, seq, sent_ns


@dataclass(frozen=True)
class SendConfig:
    """What the sender does: ``rate_pps`` datagrams a second of ``size_bytes`` UDP payload bytes."""

    dst: str
    port: int
    rate_pps: float
    size_bytes: int
    duration_s: float
    flow: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be in 1..65535, got {self.port}", key="port")
        if not (0 < self.rate_pps <= 100_000 and math.isfinite(self.rate_pps)):
            raise ConfigError(f"rate must be in (0, 100000] pps, got {self.rate_pps}", key="rate-pps")
        if not HEADER_BYTES <= self.size_bytes <= MAX_PAYLOAD_BYTES:
            raise ConfigError(f"size must be in [{HEADER_BYTES}, {MAX_PAYLOAD_BYTES}] bytes, got {self.size_bytes}",
                              key="size")
        if not (0 < self.duration_s < math.inf):
            raise ConfigError(f"duration must be > 0 s, got {self.duration_s}", key="duration")
        if not 0 <= self.flow <= 0xFFFF:
            raise ConfigError(f"flow must be in 0..65535, got {self.flow}", key="flow")


def send(cfg: SendConfig, out: str, stop: Any = None) -> int:
    """Send probes on a fixed schedule (datagram ``k`` at ``start + k / rate``); return how many.

    A late loop does not drift: it sends the datagrams that are due at once and returns to the
    schedule. Stops after ``duration_s`` or when ``stop`` (a ``threading.Event``) is set.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # connected: the sender's port takes datagrams from the receiver's address and port only, where an
    # unconnected socket would accept any sender's on every address of the node. Connected at the first
    # send that can be (no route yet fails like a send)
    connected = False
    deadline = deadline_after(cfg.duration_s)
    period_s = 1.0 / cfg.rate_pps
    errors = 0
    k = 0
    with CsvLog(out, SENT_COLUMNS) as rec:
        start = time.monotonic()
        try:
            while stop is None or not stop.is_set():
                due = start + k * period_s
                if due >= deadline:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    if stop is not None:
                        if stop.wait(min(wait, _POLL_S)):
                            break
                    else:
                        time.sleep(min(wait, _POLL_S))
                    rec.tick()
                    continue
                sent_ns = time.time_ns()
                try:
                    if not connected:
                        sock.connect((cfg.dst, cfg.port))
                        connected = True
                    sock.send(encode(cfg.flow, k, sent_ns, cfg.size_bytes))
                except OSError as e:
                    # no route, link down, buffer full: the datagram is lost, and recorded as sent
                    errors += 1
                    if errors == 1 or errors % 1000 == 0:
                        log.warning("send of seq %d failed: %s (%d failures so far)", k, e.strerror, errors)
                rec.row((cfg.flow, k, sent_ns))
                k += 1
        finally:
            sock.close()
    log.info("sent %d datagrams to %s:%d (%d send errors)", k, cfg.dst, cfg.port, errors)
    return k


def receive(bind: str, port: int, duration_s: float, out: str, flow: int | None = None,
            stop: Any = None) -> int:
    """Record every probe arriving on ``bind:port`` for ``duration_s``; return how many.

    ``flow`` given: datagrams of other flows are ignored. Others than probes are always ignored.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        kernel_ts = True
    except OSError:
        kernel_ts = False
    sock.bind((bind, port))
    sock.settimeout(_POLL_S)
    deadline = deadline_after(duration_s)
    n = 0
    with CsvLog(out, RECV_COLUMNS) as rec:
        try:
            while (stop is None or not stop.is_set()) and time.monotonic() < deadline:
                try:
                    data, anc, _flags, _addr = sock.recvmsg(MAX_PAYLOAD_BYTES, 64)
                except TimeoutError:
                    rec.tick()
                    continue
                except InterruptedError:
                    continue
                recv_ns = time.time_ns()
                if kernel_ts:
                    for level, kind, cdata in anc:
                        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= _TIMESPEC.size:
                            sec, nsec = _TIMESPEC.unpack_from(cdata)
                            recv_ns = sec * 1_000_000_000 + nsec
                got = decode(data)
                if got is None or (flow is not None and got[0] != flow):
                    continue
                rec.row((got[0], got[1], got[2], recv_ns))
                n += 1
        finally:
            sock.close()
    log.info("received %d datagrams on %s:%d", n, bind, port)
    return n


# ---------------------------------------------------------------- parsing

def _load(sent_csv: str, recv_csv: str, flow: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    sent = read_records(sent_csv, {"flow": int, "seq": int, "sent_ns": int})
    recv = read_records(recv_csv, {"flow": int, "seq": int, "sent_ns": int, "recv_ns": int})
    if flow is not None:
        sent = [r for r in sent if r["flow"] == flow]
        recv = [r for r in recv if r["flow"] == flow]
    s_seq = np.array([r["seq"] for r in sent], dtype=np.int64)
    s_ns = np.array([r["sent_ns"] for r in sent], dtype=np.int64)
    r_seq = np.array([r["seq"] for r in recv], dtype=np.int64)
    r_ns = np.array([[r["sent_ns"], r["recv_ns"]] for r in recv], dtype=np.int64).reshape(-1, 2)
    return s_seq, s_ns, r_seq, r_ns


@dataclass
class UdpSamples:
    """One entry per datagram sent, ordered by sequence number.

    Attributes
    ----------
    sent_unix_s : ndarray, shape (n,)
        Send time, unix seconds.
    seq : ndarray of int64, shape (n,)
    one_way_ms : ndarray, shape (n,)
        One-way delay of the first copy received, ms; NaN if lost.
    """

    sent_unix_s: np.ndarray
    seq: np.ndarray
    one_way_ms: np.ndarray

    @property
    def lost(self) -> int:
        return int(np.isnan(self.one_way_ms).sum())


def udp_samples(sent_csv: str, recv_csv: str, flow: int | None = None) -> UdpSamples:
    """Per-datagram send time and one-way delay (NaN when lost), for plotting against the timeline.

    A datagram received but missing from the sender's file (the sender was killed before its last
    flush) still counts as sent, with the send time carried in the datagram.
    """
    return _samples(*_load(sent_csv, recv_csv, flow))


def _samples(s_seq: np.ndarray, s_ns: np.ndarray, r_seq: np.ndarray, r_ns: np.ndarray) -> UdpSamples:
    # first arrival of each seq
    first_idx = np.unique(r_seq, return_index=True)[1] if r_seq.size else np.zeros(0, dtype=np.int64)
    fr_seq, fr_ns = r_seq[first_idx], r_ns[first_idx]
    seq = np.union1d(s_seq, fr_seq)
    sent_ns = np.zeros(seq.size, dtype=np.int64)
    sent_ns[np.searchsorted(seq, fr_seq)] = fr_ns[:, 0]
    if s_seq.size:
        s_u, s_i = np.unique(s_seq, return_index=True)
        sent_ns[np.searchsorted(seq, s_u)] = s_ns[s_i]
    one_way_ms = np.full(seq.size, np.nan)
    one_way_ms[np.searchsorted(seq, fr_seq)] = (fr_ns[:, 1] - fr_ns[:, 0]) / 1e6
    return UdpSamples(sent_ns / 1e9, seq, one_way_ms)


def summarise_udp(sent_csv: str, recv_csv: str, flow: int | None = None) -> dict[str, Any]:
    """Summary of one probe flow.

    Returns
    -------
    dict
        ``sent``, ``received`` (distinct datagrams), ``lost``, ``loss_pct``, ``duplicates`` (extra
        copies received), ``reordered`` (first arrivals whose seq is lower than one already seen),
        ``one_way_ms`` (array, per received datagram in seq order) and its ``min_ms``, ``mean_ms``,
        ``p50_ms``, ``p95_ms``, ``p99_ms``, ``max_ms`` (NaN when nothing arrived).
    """
    s_seq, s_ns, r_seq, r_ns = _load(sent_csv, recv_csv, flow)
    samples = _samples(s_seq, s_ns, r_seq, r_ns)
    sent = int(samples.seq.size)
    # arrival order is file order; duplicates are later copies of a seq already seen
    _, first_idx = np.unique(r_seq, return_index=True)
    is_first = np.zeros(r_seq.size, dtype=bool)
    is_first[first_idx] = True
    duplicates = int(r_seq.size - first_idx.size)
    firsts = r_seq[is_first]
    if firsts.size > 1:
        running_max = np.maximum.accumulate(firsts)
        reordered = int((firsts[1:] < running_max[:-1]).sum())
    else:
        reordered = 0
    received = int(firsts.size)
    ow = samples.one_way_ms[~np.isnan(samples.one_way_ms)]

    def stat(fn: Any) -> float:
        return float(fn(ow)) if ow.size else math.nan

    return {
        "sent": sent,
        "received": received,
        "lost": sent - received,
        "loss_pct": 100.0 * (sent - received) / sent if sent else math.nan,
        "duplicates": duplicates,
        "reordered": reordered,
        "one_way_ms": ow,
        "min_ms": stat(np.min),
        "mean_ms": stat(np.mean),
        "p50_ms": stat(lambda a: np.percentile(a, 50)),
        "p95_ms": stat(lambda a: np.percentile(a, 95)),
        "p99_ms": stat(lambda a: np.percentile(a, 99)),
        "max_ms": stat(np.max),
    }


# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emulator.traffic.udpprobe", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv", help="record arriving probes")
    r.add_argument("--bind", default="0.0.0.0")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--duration", type=float, required=True, help="seconds")
    r.add_argument("--flow", type=int, default=None, help="record only this flow id")
    r.add_argument("--out", required=True)
    s = sub.add_parser("send", help="send probes on a fixed schedule")
    s.add_argument("--dst", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--rate-pps", type=float, required=True)
    s.add_argument("--size", type=int, default=64, help="UDP payload bytes (>= 16)")
    s.add_argument("--duration", type=float, required=True, help="seconds")
    s.add_argument("--flow", type=int, default=0)
    s.add_argument("--out", required=True)
    a = p.parse_args(argv)
    setup_cli_logging(a.verbose)
    def body(stop: threading.Event) -> None:
        if a.cmd == "recv":
            receive(a.bind, a.port, a.duration, a.out, a.flow, stop)
        else:
            send(SendConfig(a.dst, a.port, a.rate_pps, a.size, a.duration, a.flow), a.out, stop)

    return run_program("udpprobe", body)


if __name__ == "__main__":
    sys.exit(main())
