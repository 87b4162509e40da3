"""A service's state sent over TCP from the compute node that hands its users over to the one that takes them.

Receiver (in the new node): accepts one connection, reads until the sender closes its side, answers
with the byte count (8 bytes, big-endian) and exits::

    python -m emulator.traffic.migrate recv --bind 10.0.9.5 --port 7100 --timeout 30

Sender (in the old node): connects (retrying while the receiver is not yet listening), sends
``--bytes`` bytes, closes its side and waits for the receiver's count; writes one JSON record::

    python -m emulator.traffic.migrate send --dst 10.0.9.5 --port 7100 --bytes 10000000 --out m.json

Record: ``t_begin_unix_s`` (first connect attempt), ``t_connected_unix_s`` (handshake done),
``t_end_unix_s`` (count received), ``bytes_sent``, ``bytes_acked``, ``ok`` and ``duration_s`` =
``t_end - t_connected``: from the first byte sent to the receiver's word that the last arrived, one
transfer time plus one round trip at the least (the handshake is not counted; it is
``t_connected - t_begin``, kept apart).
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import struct
import sys
import threading
import time

from topologies.errors import ConfigError

from . import run_program, setup_cli_logging

log = logging.getLogger(__name__)

_CHUNK = bytes(range(256)) * 4096  # 1 MiB: one sendall per MiB keeps the interpreter out of the way


def receive(bind: str, port: int, timeout_s: float, stop: threading.Event | None = None) -> int:
    """Accept one sender on ``bind:port``, read to its end, answer with the count; return the count."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((bind, port))
    srv.listen(1)
    srv.settimeout(timeout_s)
    try:
        conn, _ = srv.accept()
    finally:
        srv.close()
    conn.settimeout(timeout_s)
    got = 0
    buf = bytearray(1 << 20)
    with conn:
        while stop is None or not stop.is_set():
            n = conn.recv_into(buf)
            if not n:
                break
            got += n
        conn.sendall(struct.pack("!Q", got))
    log.info("received %d bytes", got)
    return got


def send(dst: str, port: int, n_bytes: int, timeout_s: float) -> dict[str, float | int | bool]:
    """Send ``n_bytes`` to a receiver at ``dst:port``; return the record (see the module docstring)."""
    if not 0 < n_bytes <= 1 << 40:
        raise ConfigError(f"bytes must be in (0, 2^40], got {n_bytes}", key="bytes")
    t_begin = time.time()
    deadline = time.monotonic() + timeout_s
    while True:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            s.connect((dst, port))
            break
        except ConnectionRefusedError:  # the receiver is not listening yet
            s.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)
    t_conn = time.time()
    sent = acked = 0
    with s:
        view = memoryview(_CHUNK)
        while sent < n_bytes:
            k = min(len(_CHUNK), n_bytes - sent)
            s.sendall(view[:k])
            sent += k
        s.shutdown(socket.SHUT_WR)
        word = b""
        while len(word) < 8:
            part = s.recv(8 - len(word))
            if not part:
                break
            word += part
        if len(word) == 8:
            acked = struct.unpack("!Q", word)[0]
    t_end = time.time()
    return {"t_begin_unix_s": t_begin, "t_connected_unix_s": t_conn, "t_end_unix_s": t_end, "bytes_sent": sent,
            "bytes_acked": acked, "ok": acked == n_bytes, "duration_s": t_end - t_conn}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emulator.traffic.migrate", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv", help="receive one state transfer")
    r.add_argument("--bind", required=True)
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the sender and between reads")
    s = sub.add_parser("send", help="send the state")
    s.add_argument("--dst", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--bytes", type=int, required=True)
    s.add_argument("--timeout", type=float, default=60.0, help="seconds to connect, and between socket operations")
    s.add_argument("--out", required=True, help="JSON record of the transfer")
    a = p.parse_args(argv)
    setup_cli_logging(a.verbose)

    def body(stop: threading.Event) -> None:
        if a.cmd == "recv":
            receive(a.bind, a.port, a.timeout, stop)
        else:
            rec = send(a.dst, a.port, a.bytes, a.timeout)
            with open(a.out, "w", encoding="utf-8") as f:
                json.dump(rec, f)
            log.info("sent %d bytes in %.3f s (%s)", rec["bytes_sent"], rec["duration_s"],
                     "acknowledged" if rec["ok"] else f"only {rec['bytes_acked']} acknowledged")

    return run_program("migrate", body)


if __name__ == "__main__":
    sys.exit(main())
