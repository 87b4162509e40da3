"""The orbital compute service (runs on compute nodes) and the ground client that sends it requests.

Server: an HTTP/1.1 server (one thread per connection, keep-alive) that for every request does
``work_ms`` milliseconds of CPU (chained SHA-256 over a 4 KiB block, measured with the thread's CPU
clock, so under contention it takes longer in wall time, as a loaded on-board computer would) and
answers with JSON carrying its own wall-clock service time::

    python -m emulator.traffic.service serve --bind 10.0.9.1 --port 8080 --work-ms 5 --name sat-12

Client: sends requests at ``rate_pps`` on a fixed schedule, at most one in flight (a slot that
passes while a request is outstanding is skipped), to a target chosen by a policy:

* ``fixed``: the first target;
* ``round-robin``: the targets in turn;
* ``nearest`` (and ``best``, whose schedule emulator.migration extends after each state transfer):
  the target named by a schedule file the emulator writes, a JSON list of
  ``{"t_unix_s": ..., "target": NAME}``, sorted by time; the entry in force at the send time is
  used (the first entry before it starts). The file is re-read when it changes.

::

    python -m emulator.traffic.service request --targets sat-12=10.0.9.1,sat-40=10.0.9.5 \\
        --policy nearest --schedule nearest.json --rate-pps 5 --duration 60 --out req.csv

Records, one per request::

    t_send_unix_s,seq,target,addr,status,ok,total_ms,service_ms,network_ms,new_conn

``status`` is the HTTP status code, or ``timeout``, ``refused``, ``unreachable``, ``reset``,
``error``; failed requests have empty latencies. ``network_ms = total_ms - service_ms``: the
request's time on the network (one RTT on a kept-alive connection; ``new_conn=1`` marks requests
that also paid the TCP handshake, i.e. two RTTs).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import http.client
import json
import logging
import math
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from topologies.errors import ConfigError

from . import CsvLog, deadline_after, read_records, run_program, setup_cli_logging

log = logging.getLogger(__name__)

DEFAULT_PORT = 8080
POLICIES = ("fixed", "round-robin", "nearest", "best")
COLUMNS = ("t_send_unix_s", "seq", "target", "addr", "status", "ok", "total_ms", "service_ms", "network_ms",
           "new_conn")
SERVER_COLUMNS = ("t_unix_s", "client", "id", "service_ms", "cpu_ms")
_BLOCK = bytes(range(256)) * 16  # 4 KiB: large enough that hashlib releases the GIL


# ---------------------------------------------------------------- server

def do_work(work_ms: float) -> tuple[str, float]:
    """Burn ``work_ms`` ms of this thread's CPU time on chained SHA-256; return (digest, cpu ms)."""
    t0 = time.thread_time()
    target_s = work_ms / 1e3
    digest = b""
    while True:
        for _ in range(8):
            h = hashlib.sha256(_BLOCK)
            h.update(digest)
            digest = h.digest()
        used = time.thread_time() - t0
        if used >= target_s:
            return digest.hex()[:16], used * 1e3


def make_server(bind: str, port: int, work_ms: float, name: str, rec: CsvLog | None = None) -> ThreadingHTTPServer:
    """An HTTP server on ``bind:port`` answering every GET with ``work_ms`` of work (not started)."""
    if not 0 <= work_ms <= 60_000:
        raise ConfigError(f"work must be in [0, 60000] ms, got {work_ms}", key="work-ms")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 120  # an idle kept-alive connection is dropped after this many seconds
        # headers and body go out in two writes: with Nagle's algorithm the body would wait for the
        # client's ACK of the headers, one extra round trip over the constellation
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            t0 = time.perf_counter()
            req_id = self.path.rpartition("id=")[2] if "id=" in self.path else ""
            digest, cpu_ms = do_work(work_ms)
            service_ms = (time.perf_counter() - t0) * 1e3
            body = json.dumps({"node": name, "id": req_id, "service_ms": service_ms, "cpu_ms": cpu_ms,
                               "work_ms": work_ms, "digest": digest}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            if rec is not None:
                rec.row((f"{time.time():.6f}", self.client_address[0], req_id, f"{service_ms:.3f}",
                         f"{cpu_ms:.3f}"))

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.client_address[0], *args)

    server = ThreadingHTTPServer((bind, port), Handler)
    server.daemon_threads = True
    return server


def serve(bind: str, port: int, work_ms: float, name: str, duration_s: float | None = None,
          out: str | None = None, stop: Any = None) -> None:
    """Run the service until ``duration_s`` has passed (None: forever) or ``stop`` is set."""
    deadline = deadline_after(duration_s) if duration_s is not None else math.inf
    rec = CsvLog(out, SERVER_COLUMNS) if out else None
    server = make_server(bind, port, work_ms, name, rec)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    log.info("service %s on %s:%d, %g ms of work per request", name, bind, port, work_ms)
    try:
        while time.monotonic() < deadline:
            left = min(0.5, deadline - time.monotonic())
            if stop is not None:
                if stop.wait(max(0.0, left)):
                    break
            else:
                time.sleep(max(0.0, left))
            if rec is not None:
                rec.tick()
    finally:
        server.shutdown()
        server.server_close()
        if rec is not None:
            rec.close()


# ---------------------------------------------------------------- client

@dataclass(frozen=True)
class Target:
    """A compute node's service: its name, address and port."""

    name: str
    addr: str
    port: int = DEFAULT_PORT


def parse_targets(text: str, default_port: int = DEFAULT_PORT) -> tuple[Target, ...]:
    """Parse ``NAME=ADDR[:PORT][,NAME=ADDR[:PORT]...]``.

    Raises
    ------
    ConfigError
        Naming the malformed item.
    """
    out: list[Target] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, sep, addr = item.partition("=")
        port = default_port
        if ":" in addr:
            addr, _, p = addr.partition(":")
            try:
                port = int(p)
            except ValueError:
                raise ConfigError(f"target {item!r}: port {p!r} is not a number", key="targets") from None
        if not sep or not name or not addr or not 0 < port < 65536:
            raise ConfigError(f"target {item!r} is not NAME=ADDR[:PORT]", key="targets")
        if any(t.name == name for t in out):
            raise ConfigError(f"target name {name!r} given twice", key="targets")
        out.append(Target(name, addr, port))
    if not out:
        raise ConfigError("no targets given", key="targets")
    return tuple(out)


class NearestSchedule:
    """The emulator's schedule of the nearest compute node, re-read when the file changes."""

    def __init__(self, path: str, names: set[str]) -> None:
        self.path = path
        self.names = names
        self._mtime_ns = -1
        self._t = np.zeros(0)
        self._targets: list[str] = []
        self._reload()

    def _reload(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError as e:
            if self._targets:  # keep the last good schedule while the file is being replaced
                return
            raise ConfigError(f"cannot read schedule: {e.strerror}", file=self.path) from None
        if st.st_mtime_ns == self._mtime_ns:
            return
        try:
            with open(self.path, encoding="utf-8") as f:
                entries = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            if self._targets:
                return  # a half-written new version: keep the old one until the next look
            raise ConfigError(f"schedule is not readable JSON: {e}", file=self.path) from None
        self._mtime_ns = st.st_mtime_ns
        if not isinstance(entries, list) or not entries:
            raise ConfigError("schedule must be a non-empty JSON list of {t_unix_s, target}", file=self.path)
        t: list[float] = []
        names: list[str] = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "t_unix_s" not in entry or "target" not in entry:
                raise ConfigError(f"entry {i} is not {{t_unix_s, target}}: {entry!r}", file=self.path,
                                  key=f"[{i}]")
            if entry["target"] not in self.names:
                raise ConfigError(f"entry {i} names target {entry['target']!r}, not one of {sorted(self.names)}",
                                  file=self.path, key=f"[{i}].target")
            try:
                t.append(float(entry["t_unix_s"]))
            except (TypeError, ValueError):
                raise ConfigError(f"entry {i}: t_unix_s {entry['t_unix_s']!r} is not a number", file=self.path,
                                  key=f"[{i}].t_unix_s") from None
            names.append(str(entry["target"]))
        order = np.argsort(t, kind="stable")
        self._t = np.asarray(t)[order]
        self._targets = [names[i] for i in order]

    def target_at(self, t_unix_s: float) -> str:
        """Name of the target in force at ``t_unix_s`` (the first entry's before the schedule starts)."""
        self._reload()
        i = int(np.searchsorted(self._t, t_unix_s, side="right")) - 1
        return self._targets[max(i, 0)]


@dataclass(frozen=True)
class RequestConfig:
    """What the client does (see the module docstring)."""

    targets: tuple[Target, ...]
    policy: str = "fixed"
    rate_pps: float = 5.0
    duration_s: float = 10.0
    schedule: str | None = None
    timeout_s: float = 2.0

    def __post_init__(self) -> None:
        if not self.targets:
            raise ConfigError("no targets given", key="targets")
        if self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {', '.join(POLICIES)}; got {self.policy!r}", key="policy")
        if self.policy in ("nearest", "best") and not self.schedule:
            raise ConfigError(f"policy {self.policy!r} needs a schedule file", key="schedule")
        if not 0 < self.rate_pps <= 1000:
            raise ConfigError(f"rate must be in (0, 1000] pps, got {self.rate_pps}", key="rate-pps")
        if not 0 < self.duration_s < math.inf:
            raise ConfigError(f"duration must be > 0 s, got {self.duration_s}", key="duration")
        if not 0 < self.timeout_s <= 60:
            raise ConfigError(f"timeout must be in (0, 60] s, got {self.timeout_s}", key="timeout-s")


def _failure_status(e: BaseException) -> str:
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)):
        return "reset"
    if isinstance(e, OSError) and e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN):
        return "unreachable"
    return "error"


class _Client:
    """Kept-alive connections to the targets, reopened after a failure."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.conns: dict[str, http.client.HTTPConnection] = {}

    def close(self) -> None:
        for c in self.conns.values():
            c.close()
        self.conns.clear()

    def _drop(self, name: str) -> None:
        c = self.conns.pop(name, None)
        if c is not None:
            c.close()

    def request(self, target: Target, seq: int) -> tuple[str, float, float, bool]:
        """One request; return (status, total ms, service ms, opened a new connection)."""
        for attempt in range(2):
            new = target.name not in self.conns
            if new:
                self.conns[target.name] = http.client.HTTPConnection(target.addr, target.port, timeout=self.timeout_s)
            conn = self.conns[target.name]
            t0 = time.perf_counter()
            try:
                conn.request("GET", f"/compute?id={seq}")
                resp = conn.getresponse()
                body = resp.read()
                total_ms = (time.perf_counter() - t0) * 1e3
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self._drop(target.name)
                if not new and attempt == 0:
                    continue  # the server closed an idle kept-alive connection: retry on a new one
                return _failure_status(e), math.nan, math.nan, new
            except (OSError, http.client.HTTPException) as e:
                self._drop(target.name)
                return _failure_status(e), math.nan, math.nan, new
            if resp.status != 200:
                return str(resp.status), total_ms, math.nan, new
            try:
                service_ms = float(json.loads(body)["service_ms"])
            except (ValueError, KeyError, TypeError):
                return "bad-response", total_ms, math.nan, new
            return "200", total_ms, service_ms, new
        raise AssertionError("unreachable")  # pragma: no cover


def run_requests(cfg: RequestConfig, out: str, stop: Any = None) -> int:
    """Send requests until ``duration_s`` or ``stop``; return how many were sent."""
    by_name = {t.name: t for t in cfg.targets}
    schedule = (NearestSchedule(cfg.schedule, set(by_name)) if cfg.policy in ("nearest", "best") and cfg.schedule
                else None)
    client = _Client(cfg.timeout_s)
    deadline = deadline_after(cfg.duration_s)
    period_s = 1.0 / cfg.rate_pps
    start = time.monotonic()
    k = seq = skipped = 0
    with CsvLog(out, COLUMNS) as rec:
        try:
            while stop is None or not stop.is_set():
                due = start + k * period_s
                if due >= deadline:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    if stop is not None:
                        if stop.wait(min(wait, 0.2)):
                            break
                    else:
                        time.sleep(min(wait, 0.2))
                    rec.tick()
                    continue
                t_send = time.time()
                if cfg.policy == "fixed":
                    target = cfg.targets[0]
                elif cfg.policy == "round-robin":
                    target = cfg.targets[seq % len(cfg.targets)]
                else:
                    assert schedule is not None
                    target = by_name[schedule.target_at(t_send)]
                status, total_ms, service_ms, new = client.request(target, seq)
                ok = status == "200"
                network_ms = total_ms - service_ms
                rec.row((f"{t_send:.6f}", seq, target.name, target.addr, status, int(ok), _ms(total_ms),
                         _ms(service_ms), _ms(network_ms), int(new)))
                seq += 1
                # next slot not yet passed; at most one request in flight
                nxt = max(k + 1, math.ceil((time.monotonic() - start) / period_s))
                skipped += nxt - k - 1
                k = nxt
        finally:
            client.close()
    log.info("%d requests sent (%d schedule slots skipped while waiting)", seq, skipped)
    return seq


def _ms(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.3f}"


# ---------------------------------------------------------------- summary

def _float_or_nan(s: str) -> float:
    return float(s) if s else math.nan


def _stats(a: np.ndarray) -> dict[str, float]:
    a = a[~np.isnan(a)]
    if not a.size:
        return {"p50": math.nan, "p95": math.nan, "p99": math.nan, "mean": math.nan, "max": math.nan}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(a.mean()), "max": float(a.max())}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if r["ok"]]
    n = len(rows)
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {
        "count": n,
        "ok": len(ok),
        "failures": n - len(ok),
        "failure_pct": 100.0 * (n - len(ok)) / n if n else math.nan,
        "statuses": statuses,
        "total_ms": _stats(np.array([r["total_ms"] for r in ok], dtype=float)),
        "network_ms": _stats(np.array([r["network_ms"] for r in ok], dtype=float)),
        "service_ms": _stats(np.array([r["service_ms"] for r in ok], dtype=float)),
    }


def summarise_requests(csv_path: str) -> dict[str, Any]:
    """Summary of a client's request file.

    Returns
    -------
    dict
        ``count``, ``ok``, ``failures``, ``failure_pct``, ``statuses`` (status -> count), and for
        ``total_ms``, ``network_ms``, ``service_ms`` a dict of ``p50``, ``p95``, ``p99``, ``mean``,
        ``max`` over successful requests (NaN when none), plus ``per_target``: target name -> the
        same summary for that target's requests.
    """
    rows = read_records(csv_path, {"t_send_unix_s": float, "target": str, "status": str,
                                   "ok": lambda s: bool(int(s)), "total_ms": _float_or_nan,
                                   "service_ms": _float_or_nan, "network_ms": _float_or_nan})
    out = _summary(rows)
    names = list(dict.fromkeys(r["target"] for r in rows))
    out["per_target"] = {name: _summary([r for r in rows if r["target"] == name]) for name in names}
    return out


def latency_split(csv_path: str, predicted_rtt_ms: Any) -> dict[str, Any]:
    """Successful requests' latency split into network, queueing and service time.

    ``network_ms`` is the predicted round trip on the path to the request's target at its send time (two
    of them for a request that opened its connection: the handshake's and the request's);
    ``service_ms`` is the time the service reports; ``queueing_ms`` is the rest of the measured time:
    waits in the links' queues and the shaper, in the server before it reads the request (accept,
    scheduling under its CPU share) and in the client.

    Parameters
    ----------
    csv_path : str
        A client's ``requests.csv``.
    predicted_rtt_ms : callable
        ``(target name, send times in unix s (n,)) -> predicted RTT in ms (n,)``.

    Returns
    -------
    dict
        ``network_ms``, ``queueing_ms``, ``service_ms``: each ``p50``, ``p95``, ``p99``, ``mean``, ``max``.
    """
    rows = read_records(csv_path, {"t_send_unix_s": float, "target": str, "ok": lambda s: bool(int(s)),
                                   "total_ms": _float_or_nan, "service_ms": _float_or_nan,
                                   "new_conn": lambda s: int(s or 0)})
    ok = [r for r in rows if r["ok"]]
    net = np.full(len(ok), np.nan)
    for name in {r["target"] for r in ok}:
        idx = np.array([i for i, r in enumerate(ok) if r["target"] == name])
        rtt = np.asarray(predicted_rtt_ms(name, np.array([ok[i]["t_send_unix_s"] for i in idx])), float)
        net[idx] = rtt * (1 + np.array([ok[i]["new_conn"] for i in idx]))
    total = np.array([r["total_ms"] for r in ok], dtype=float)
    service = np.array([r["service_ms"] for r in ok], dtype=float)
    return {"network_ms": _stats(net), "queueing_ms": _stats(total - service - net), "service_ms": _stats(service)}


# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emulator.traffic.service", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run the compute service")
    s.add_argument("--bind", default="0.0.0.0")
    s.add_argument("--port", type=int, default=DEFAULT_PORT)
    s.add_argument("--work-ms", type=float, required=True)
    s.add_argument("--name", default=socket.gethostname())
    s.add_argument("--duration", type=float, default=None, help="seconds (default: until signalled)")
    s.add_argument("--out", default=None, help="CSV of requests served (optional)")
    r = sub.add_parser("request", help="send requests to compute nodes")
    r.add_argument("--targets", required=True, help="NAME=ADDR[:PORT],...")
    r.add_argument("--port", type=int, default=DEFAULT_PORT, help="port of targets given without one")
    r.add_argument("--policy", choices=POLICIES, default="fixed")
    r.add_argument("--schedule", default=None, help="JSON list of {t_unix_s, target} (policies nearest, best)")
    r.add_argument("--rate-pps", type=float, default=5.0)
    r.add_argument("--duration", type=float, required=True, help="seconds")
    r.add_argument("--timeout-s", type=float, default=2.0)
    r.add_argument("--out", required=True)
    a = p.parse_args(argv)
    setup_cli_logging(a.verbose)
    def body(stop: threading.Event) -> None:
        if a.cmd == "serve":
            serve(a.bind, a.port, a.work_ms, a.name, a.duration, a.out, stop)
        else:
            cfg = RequestConfig(parse_targets(a.targets, a.port), a.policy, a.rate_pps, a.duration, a.schedule,
                                a.timeout_s)
            run_requests(cfg, a.out, stop)

    return run_program("service", body)


if __name__ == "__main__":
    sys.exit(main())
