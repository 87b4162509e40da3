"""Path probe: every interval, TTL-limited ICMP echo probes recording the routers on the path.

Each round sends one ICMP echo request per TTL 1..``max_ttl`` at once (like ``traceroute -q 1``
with simultaneous probes) and listens for the answers: an ICMP time-exceeded from the router where
the TTL ran out, an echo reply from the destination, or a destination-unreachable from a router
with no route. A round ends when every TTL up to the destination has answered or at the timeout.

The probes go through an ordinary raw ICMP socket (needs CAP_NET_RAW), so the kernel routes each
one with the routing table in force at that moment. (scapy's ``sr()`` routes with its own copy of
the table taken at import, which goes stale as the emulator changes routes under a running probe.)

Linux routers answer with time-exceeded from an address of their own (of the interface the error leaves
by, or the incoming one with ``net.ipv4.icmp_errors_use_inbound_ifaddr=1``; either names the router) and
rate-limit these errors per destination (``net.ipv4.icmp_ratelimit``, 1000 ms in a new namespace): the
emulator sets it to 0 in every router (:data:`emulator.network.ROUTER_SYSCTLS`), else rounds faster than
about one a second show missing hops.

Usage::

    python -m emulator.traffic.pathprobe --dst 10.0.3.2 --max-ttl 16 --interval-s 1 \\
        --duration 30 --out paths.csv

Records, one row per TTL per round, written and flushed when the round ends::

    t_unix_s,round,ttl,hop_addr,rtt_ms,kind

``kind`` is ``time-exceeded``, ``echo-reply`` (the destination; last row of the round),
``unreachable`` (a router had no route; last row) or ``none`` (no answer: ``hop_addr`` empty and
``rtt_ms`` empty). Rows go up to the destination, else up to the highest TTL that answered (at least
one row per round, so a round where nothing answered is still recorded).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any

from topologies.errors import ConfigError

from . import CsvLog, deadline_after, read_records, run_program, setup_cli_logging

log = logging.getLogger(__name__)

COLUMNS = ("t_unix_s", "round", "ttl", "hop_addr", "rtt_ms", "kind")
MAX_TTL = 64
_TTL_BITS = 6  # seq = (round << 6) | (ttl - 1)
ICMP_ECHO_REPLY, ICMP_UNREACH, ICMP_ECHO, ICMP_TIME_EXCEEDED = 0, 3, 8, 11
_KIND = {ICMP_ECHO_REPLY: "echo-reply", ICMP_UNREACH: "unreachable", ICMP_TIME_EXCEEDED: "time-exceeded"}


def checksum(data: bytes) -> int:
    """Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes = b"satnetem") -> bytes:
    """An ICMP echo request message (no IP header)."""
    head = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq)
    csum = checksum(head + payload)
    return struct.pack("!BBHHH", ICMP_ECHO, 0, csum, ident, seq) + payload


def parse_answer(packet: bytes, ident: int, dst: str) -> tuple[int, int, str] | None:
    """``(icmp type, seq, source address)`` if ``packet`` (IPv4, as a raw socket returns it) answers
    one of our probes (echo ``ident``, sent to ``dst``), else None."""
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    src = socket.inet_ntoa(packet[12:16])
    icmp = packet[ihl:]
    if len(icmp) < 8:
        return None
    itype = icmp[0]
    if itype == ICMP_ECHO_REPLY:
        rid, rseq = struct.unpack_from("!HH", icmp, 4)
        if rid == ident and src == dst:
            return itype, rseq, src
        return None
    if itype in (ICMP_TIME_EXCEEDED, ICMP_UNREACH):
        inner = icmp[8:]
        if len(inner) < 20:
            return None
        iihl = (inner[0] & 0x0F) * 4
        if inner[9] != socket.IPPROTO_ICMP or socket.inet_ntoa(inner[16:20]) != dst:
            return None
        q = inner[iihl:]
        if len(q) < 8 or q[0] != ICMP_ECHO:
            return None
        rid, rseq = struct.unpack_from("!HH", q, 4)
        if rid == ident:
            return itype, rseq, src
    return None


@dataclass(frozen=True)
class PathProbeConfig:
    """Probe ``dst`` with TTL 1..``max_ttl`` every ``interval_s`` for ``duration_s``."""

    dst: str
    max_ttl: int = 16
    interval_s: float = 1.0
    duration_s: float = 10.0
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        try:
            socket.inet_aton(self.dst)
        except OSError:
            raise ConfigError(f"dst must be an IPv4 address, got {self.dst!r}", key="dst") from None
        if not 1 <= self.max_ttl <= MAX_TTL:
            raise ConfigError(f"max_ttl must be in 1..{MAX_TTL}, got {self.max_ttl}", key="max-ttl")
        if not 0.05 <= self.interval_s <= 3600:
            raise ConfigError(f"interval must be in [0.05, 3600] s, got {self.interval_s}", key="interval-s")
        if not 0 < self.duration_s < math.inf:
            raise ConfigError(f"duration must be > 0 s, got {self.duration_s}", key="duration")
        if self.timeout_s is not None and not 0 < self.timeout_s <= self.interval_s:
            raise ConfigError(f"timeout must be in (0, interval={self.interval_s}] s, got {self.timeout_s}",
                              key="timeout-s")

    @property
    def round_timeout_s(self) -> float:
        return self.timeout_s if self.timeout_s is not None else min(1.0, 0.9 * self.interval_s)


def _one_round(sock: socket.socket, cfg: PathProbeConfig, ident: int, rnd: int,
               stop: Any) -> dict[int, tuple[str, float, str]]:
    """Send the probes of round ``rnd`` and collect answers: ttl -> (address, rtt ms, kind)."""
    base = (rnd % (1 << (16 - _TTL_BITS))) << _TTL_BITS
    sent_at: dict[int, float] = {}
    for ttl in range(1, cfg.max_ttl + 1):
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        seq = base | (ttl - 1)
        sent_at[ttl] = time.perf_counter()
        try:
            sock.sendto(echo_request(ident, seq), (cfg.dst, 0))
        except OSError as e:  # no route at all: nothing will answer this round
            log.debug("round %d ttl %d: send failed: %s", rnd, ttl, e.strerror)
            break
    answers: dict[int, tuple[str, float, str]] = {}
    end = time.perf_counter() + cfg.round_timeout_s
    last = cfg.max_ttl  # smallest TTL known to end the path
    while not (stop is not None and stop.is_set()):
        if len(answers) >= last and all(t in answers for t in range(1, last + 1)):
            break
        left = end - time.perf_counter()
        if left <= 0:
            break
        ready, _, _ = select.select([sock], [], [], min(left, 0.2))
        if not ready:
            continue
        packet = sock.recv(65535)
        now = time.perf_counter()
        got = parse_answer(packet, ident, cfg.dst)
        if got is None:
            continue
        itype, seq, src = got
        if seq & ~((1 << _TTL_BITS) - 1) != base:
            continue  # a late answer to an earlier round
        ttl = (seq & ((1 << _TTL_BITS) - 1)) + 1
        if ttl not in sent_at or ttl in answers:
            continue
        answers[ttl] = (src, (now - sent_at[ttl]) * 1e3, _KIND[itype])
        if itype in (ICMP_ECHO_REPLY, ICMP_UNREACH):
            last = min(last, ttl)
    return answers


def run(cfg: PathProbeConfig, out: str, stop: Any = None) -> int:
    """Probe rounds on a fixed schedule until ``duration_s`` or ``stop``; return the rounds done."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    deadline = deadline_after(cfg.duration_s)
    start = time.monotonic()
    rnd = 0
    with CsvLog(out, COLUMNS) as rec:
        try:
            while stop is None or not stop.is_set():
                due = start + rnd * cfg.interval_s
                if due >= deadline:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    if stop is not None and stop.wait(wait):
                        break
                    if stop is None:
                        time.sleep(wait)
                t_unix_s = time.time()
                answers = _one_round(sock, cfg, ident, rnd, stop)
                ends = [t for t, a in answers.items() if a[2] != "time-exceeded"]
                last = min(ends) if ends else max(answers, default=1)
                for ttl in range(1, last + 1):
                    addr, rtt_ms, kind = answers.get(ttl, ("", math.nan, "none"))
                    rec.row((f"{t_unix_s:.6f}", rnd, ttl, addr, "" if math.isnan(rtt_ms) else f"{rtt_ms:.3f}",
                             kind))
                rec.flush()  # a round is written whole
                rnd += 1
        finally:
            sock.close()
    log.info("%d probe rounds to %s", rnd, cfg.dst)
    return rnd


# ---------------------------------------------------------------- parsing

@dataclass
class PathRound:
    """One probe round: its start (unix s), the hop addresses by TTL (None: no answer), their RTTs
    (ms, NaN: no answer) and whether the destination answered."""

    t_unix_s: float
    hops: list[str | None]
    rtt_ms: list[float]
    reached: bool


def _float_or_nan(s: str) -> float:
    return float(s) if s else math.nan


def path_rounds(csv_path: str) -> list[PathRound]:
    """Rounds recorded in a path-probe file, in order. A round cut short by a crash keeps the rows
    written; a partial last line is dropped."""
    rows = read_records(csv_path, {"t_unix_s": float, "round": int, "ttl": int, "hop_addr": str,
                                   "rtt_ms": _float_or_nan, "kind": str})
    rounds: list[PathRound] = []
    current: int | None = None
    by_ttl: dict[int, dict[str, Any]] = {}

    def close() -> None:
        if current is None:
            return
        n = max(by_ttl)
        hops = [by_ttl[t]["hop_addr"] or None if t in by_ttl else None for t in range(1, n + 1)]
        rtts = [by_ttl[t]["rtt_ms"] if t in by_ttl else math.nan for t in range(1, n + 1)]
        reached = any(r["kind"] == "echo-reply" for r in by_ttl.values())
        rounds.append(PathRound(by_ttl[min(by_ttl)]["t_unix_s"], hops, rtts, reached))

    for r in rows:
        if r["round"] != current:
            close()
            current, by_ttl = r["round"], {}
        by_ttl[r["ttl"]] = r
    close()
    return rounds


def parse_paths(csv_path: str) -> list[tuple[float, list[str | None]]]:
    """``[(t_unix_s, [hop address by TTL, None where no answer]), ...]`` per round, in order.

    The destination, when it answered, is the last address of the list.
    """
    return [(r.t_unix_s, r.hops) for r in path_rounds(csv_path)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emulator.traffic.pathprobe", description=__doc__.split("\n")[0])
    p.add_argument("--dst", required=True)
    p.add_argument("--max-ttl", type=int, default=16)
    p.add_argument("--interval-s", type=float, default=1.0)
    p.add_argument("--timeout-s", type=float, default=None, help="per round (default min(1, 0.9 interval))")
    p.add_argument("--duration", type=float, required=True, help="seconds")
    p.add_argument("--out", required=True)
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    setup_cli_logging(a.verbose)
    return run_program("pathprobe", lambda stop: run(
        PathProbeConfig(a.dst, a.max_ttl, a.interval_s, a.duration, a.timeout_s), a.out, stop))


if __name__ == "__main__":
    sys.exit(main())
