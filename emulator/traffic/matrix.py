"""Background load of a traffic matrix from one endpoint: UDP to every peer at its rate, and the sink for
what the peers send here, in one process per endpoint node.

Run inside an endpoint's namespace::

    python -m emulator.traffic.matrix --bind 10.0.0.5 --port 19000 --peers peers.json \\
        --start-at 1700000000.5 --duration 30 --payload 1200 --out load.csv

``peers.json`` is a list of ``{"name": ..., "addr": ..., "rate_mbps": ...}``. Datagrams to each peer are
paced at ``rate_mbps`` (payload bytes; the IP and UDP headers come on top, as on any UDP flow) from
``--start-at`` (a Unix time shared by every endpoint, so that all sinks are bound before anyone sends).
A peer that falls behind (the process was not scheduled) skips what it missed rather than bursting it
out. The socket is non-blocking: a datagram the kernel does not take (a full socket buffer) is counted
as not sent, never queued here.

Every second a row per peer: ``t_unix_s, peer, sent_bytes, sent_packets, recv_bytes, recv_packets,
unsent_packets`` (counts in that second; received bytes are attributed by source address, ``other`` for
an address that is not a peer's).
"""

from __future__ import annotations

import argparse
import errno
import json
import select
import socket
import sys
import threading
import time
from pathlib import Path

from topologies.errors import ConfigError

from . import CsvLog, run_program, setup_cli_logging

COLUMNS = ("t_unix_s", "peer", "sent_bytes", "sent_packets", "recv_bytes", "recv_packets", "unsent_packets")
#: how far a peer may fall behind its schedule before the missed datagrams are dropped, s
MAX_BEHIND_S = 0.05
ROW_INTERVAL_S = 1.0


def read_peers(path: str) -> list[dict]:
    try:
        peers = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read peers: {e}", file=path) from None
    for p in peers:
        if not (isinstance(p, dict) and {"name", "addr", "rate_mbps"} <= p.keys() and 0 < p["rate_mbps"] < 1e5):
            raise ConfigError(f"a peer needs name, addr and rate_mbps in (0, 1e5), got {p!r}", file=path)
    return peers


def serve(args: argparse.Namespace, stop: threading.Event) -> None:
    peers = read_peers(args.peers)
    if not 64 <= args.payload <= 1472:
        raise ConfigError(f"payload must be in [64, 1472] bytes, got {args.payload}", key="payload")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    sock.bind((args.bind, args.port))
    sock.setblocking(False)
    names = [p["name"] for p in peers]
    by_addr = {p["addr"]: i for i, p in enumerate(peers)}
    dests = [(p["addr"], args.port) for p in peers]
    interval = [args.payload * 8 / (p["rate_mbps"] * 1e6) for p in peers]
    n = len(peers)
    sent_b, sent_p, unsent = [0] * n, [0] * n, [0] * n
    recv_b, recv_p = [0] * (n + 1), [0] * (n + 1)  # last: from an address that is no peer's
    data = bytes(args.payload)
    buf = bytearray(65536)
    log = CsvLog(args.out, COLUMNS)
    # wait for the common start (every sink binds before anyone sends), receiving meanwhile
    t_start = time.monotonic() + max(0.0, args.start_at - time.time())
    end = t_start + args.duration
    nxt = [t_start + k * interval[k] / max(1, n) for k in range(n)]  # spread the first datagrams
    next_row = time.monotonic() + ROW_INTERVAL_S

    def write_rows() -> None:
        t = f"{time.time():.3f}"
        for k in range(n + 1):
            if k < n or recv_p[k]:
                log.row([t, names[k] if k < n else "other", sent_b[k] if k < n else 0,
                         sent_p[k] if k < n else 0, recv_b[k], recv_p[k], unsent[k] if k < n else 0])
        for arr in (sent_b, sent_p, unsent, recv_b, recv_p):
            arr[:] = [0] * len(arr)

    try:
        while not stop.is_set():
            now = time.monotonic()
            if now >= end + 1.0:  # a second more to receive what is still in flight
                break
            if now < end:
                for k in range(n):
                    if nxt[k] > now:
                        continue
                    if now - nxt[k] > MAX_BEHIND_S:
                        skipped = int((now - nxt[k]) / interval[k])
                        unsent[k] += skipped
                        nxt[k] += skipped * interval[k]
                    while nxt[k] <= now:
                        try:
                            sock.sendto(data, dests[k])
                            sent_b[k] += len(data)
                            sent_p[k] += 1
                        except OSError as e:  # a full buffer or no route (a failure): not sent, go on
                            if e.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.ENETUNREACH,
                                               errno.EHOSTUNREACH, errno.ECONNREFUSED, errno.EINVAL):
                                raise
                            unsent[k] += 1
                        nxt[k] += interval[k]
            while True:
                try:
                    nbytes, addr = sock.recvfrom_into(buf)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # an ICMP error queued on the socket (port unreachable): read on
                    continue
                k = by_addr.get(addr[0], n)
                recv_b[k] += nbytes
                recv_p[k] += 1
            now = time.monotonic()
            if now >= next_row:
                write_rows()
                next_row += ROW_INTERVAL_S
            wake = min([next_row, end + 1.0] + ([min(nxt)] if now < end and n else []))
            if wake > now:
                select.select([sock], [], [], wake - now)
    finally:
        write_rows()
        log.close()
        sock.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="emulator.traffic.matrix", description=__doc__.splitlines()[0])
    ap.add_argument("--bind", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--peers", required=True, help="JSON list of {name, addr, rate_mbps}")
    ap.add_argument("--start-at", type=float, default=0.0, help="Unix time to start sending at")
    ap.add_argument("--duration", type=float, required=True, help="seconds of sending")
    ap.add_argument("--payload", type=int, default=1200)
    ap.add_argument("--out", required=True)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    setup_cli_logging(args.verbose)
    if not 0 < args.duration < float("inf"):
        print("emulator.traffic.matrix: --duration must be > 0 and finite", file=sys.stderr)
        return 2
    return run_program("emulator.traffic.matrix", lambda stop: serve(args, stop))


if __name__ == "__main__":
    raise SystemExit(main())


def summarise_matrix(folder: str | Path, top: int = 5) -> dict:
    """What a matrix entry offered, sent and delivered, from its folder (``matrix.json`` and one CSV per
    endpoint): totals in Mbit/s over the sending time, and the ``top`` largest pairs.

    Raises
    ------
    ConfigError
        ``matrix.json`` missing or unreadable.
    """
    from . import read_records

    d = Path(folder)
    try:
        meta = json.loads((d / "matrix.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read matrix.json: {e}", file=str(d)) from None
    names = meta["endpoints"]
    index = {n: i for i, n in enumerate(names)}
    n = len(names)
    sent = [[0] * n for _ in range(n)]
    recv = [[0] * n for _ in range(n)]
    unsent = 0
    conv = {"peer": str, "sent_bytes": int, "recv_bytes": int, "unsent_packets": int}
    for name, file in meta["files"].items():
        if not (d / file).is_file():
            continue
        i = index[name]
        for r in read_records(d / file, conv):
            j = index.get(r["peer"])
            if j is None:
                continue
            sent[i][j] += r["sent_bytes"]
            recv[j][i] += r["recv_bytes"]  # received at i from j: the pair j -> i
            unsent += r["unsent_packets"]
    dur = float(meta.get("duration_s") or 1.0)
    rates = meta["rates_mbps"]
    pairs = sorted(((rates[i][j], i, j) for i in range(n) for j in range(n) if rates[i][j] > 0), reverse=True)

    def mbps(b: int) -> float:
        return round(b * 8 / dur / 1e6, 3)

    total_sent = sum(map(sum, sent))
    total_recv = sum(map(sum, recv))
    out = {"source": meta.get("source"), "endpoints": n, "pairs": len(pairs),
           "offered_mbps": round(sum(r for r, _, _ in pairs), 3), "sent_mbps": mbps(total_sent),
           "received_mbps": mbps(total_recv), "unsent_packets": unsent,
           "delivered_pct": round(100 * total_recv / total_sent, 2) if total_sent else None,
           "matches": meta.get("matches", []),
           "top_pairs": [{"src": names[i], "dst": names[j], "offered_mbps": round(r, 3), "sent_mbps": mbps(sent[i][j]),
                          "received_mbps": mbps(recv[i][j])} for r, i, j in pairs[:top]]}
    tcp = []
    for t in meta.get("tcp", []):
        from .iperf import parse_iperf_json

        p = d / t["client"]
        res = parse_iperf_json(p.read_text(errors="replace") if p.is_file() else "")
        tcp.append({"src": t["src"], "dst": t["dst"], "received_mbps": res.get("received_mbps"),
                    "retransmits": res.get("retransmits")})
    if tcp:
        out["tcp"] = tcp
    return out
