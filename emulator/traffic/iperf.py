"""iperf3 throughput flows: argument lists for server and client, and parsers of what they write.

iperf3 3.12 (Debian 12) has no ``--json-stream``: its ``--json`` document is written only at the end.
So that an interrupted run still leaves results, the two ends record differently:

* the client writes JSON to a log file (``-J --logfile``). On SIGINT/SIGTERM iperf3 still writes the
  whole document, with the intervals so far and ``"error": "interrupt - the client has terminated"``;
  only SIGKILL loses it.
* the server writes plain text, flushed every interval, each line prefixed with the unix time
  (``--forceflush --timestamps=%s``): the receiver's per-interval record survives anything.

:func:`parse_iperf_json` reads the client's file and :func:`parse_iperf_text` the server's.
``python -m emulator.traffic.iperf parse FILE`` prints either as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from typing import Any

from topologies.errors import ConfigError

IPERF3 = "iperf3"
_UNITS = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


@dataclass(frozen=True)
class IperfFlow:
    """One iperf3 test between a server at ``addr:port`` and a client.

    ``rate_mbps`` is the target rate (required meaning for UDP; for TCP None means unlimited).
    """

    addr: str
    port: int
    duration_s: float
    udp: bool = False
    rate_mbps: float | None = None
    interval_s: float = 1.0
    size_bytes: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be in 1..65535, got {self.port}", key="port")
        if not 0 < self.duration_s < 86400:
            raise ConfigError(f"duration must be in (0, 86400) s, got {self.duration_s}", key="duration")
        if self.rate_mbps is not None and not 0 < self.rate_mbps <= 100_000:
            raise ConfigError(f"rate must be in (0, 100000] Mbit/s, got {self.rate_mbps}", key="rate_mbps")
        if self.udp and self.rate_mbps is None:
            raise ConfigError("a UDP iperf3 flow needs rate_mbps (iperf3's default, 1 Mbit/s, is rarely meant)",
                              key="rate_mbps")
        if not 0.1 <= self.interval_s <= 60:
            raise ConfigError(f"interval must be in [0.1, 60] s, got {self.interval_s}", key="interval_s")
        if self.size_bytes is not None and not 16 <= self.size_bytes <= 65507:
            raise ConfigError(f"size must be in [16, 65507] bytes, got {self.size_bytes}", key="size_bytes")


def server_argv(flow: IperfFlow, logfile: str, idle_timeout_s: float | None = None) -> list[str]:
    """Arguments of a one-test iperf3 server bound to ``flow.addr:flow.port``, logging to ``logfile``.

    ``idle_timeout_s``: the server exits if no client has come after that long (default: the
    flow's duration + 30 s), so a path that never comes up does not leave it waiting forever.
    """
    idle = idle_timeout_s if idle_timeout_s is not None else flow.duration_s + 30
    return [IPERF3, "-s", "-1", "-B", flow.addr, "-p", str(flow.port),
            "-i", _num(flow.interval_s), "--forceflush", "--timestamps=%s ",
            "--idle-timeout", str(max(1, math.ceil(idle))), "--logfile", logfile]


def client_argv(flow: IperfFlow, logfile: str, connect_timeout_ms: int = 3000) -> list[str]:
    """Arguments of the iperf3 client of ``flow``, writing its JSON document to ``logfile``."""
    argv = [IPERF3, "-c", flow.addr, "-p", str(flow.port), "-t", _num(flow.duration_s),
            "-i", _num(flow.interval_s), "-J", "--logfile", logfile,
            "--connect-timeout", str(int(connect_timeout_ms))]
    if flow.udp:
        argv.append("-u")
    if flow.rate_mbps is not None:
        argv += ["-b", f"{_num(flow.rate_mbps)}M"]
    if flow.size_bytes is not None:
        argv += ["-l", str(flow.size_bytes)]
    return argv


def _num(x: float) -> str:
    return f"{x:g}"


# ---------------------------------------------------------------- parsing

def _empty(error: str) -> dict[str, Any]:
    return {"complete": False, "error": error, "protocol": None, "sent_mbps": math.nan,
            "received_mbps": math.nan, "retransmits": None, "jitter_ms": math.nan,
            "lost_packets": None, "packets": None, "lost_pct": math.nan, "intervals": []}


def parse_iperf_json(text: str) -> dict[str, Any]:
    """Summarise an iperf3 client's ``--json`` document.

    Returns
    -------
    dict
        ``complete`` (True when iperf3 reported no error), ``error`` (iperf3's message or why the
        text could not be read, else None), ``protocol`` ("TCP"/"UDP"), ``sent_mbps`` and
        ``received_mbps`` (Mbit/s; received is NaN when the run was cut before the server reported),
        ``retransmits`` (TCP, else None), ``jitter_ms``, ``lost_packets``, ``packets``, ``lost_pct``
        (UDP, else NaN/None), and ``intervals``: list of dicts ``start_s``, ``end_s`` (s since the
        test started), ``mbps``, ``retransmits`` (TCP) or ``packets`` (UDP), as seen by the sender.

    Empty or truncated text (iperf3 killed by SIGKILL) gives ``complete=False`` and an ``error``, not
    an exception.
    """
    if not text.strip():
        return _empty("empty output (iperf3 did not finish writing)")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        return _empty(f"not a complete JSON document ({e.msg} at char {e.pos})")
    if not isinstance(doc, dict):
        return _empty("JSON document is not an object")
    out = _empty("")
    out["error"] = doc.get("error") or None
    out["complete"] = out["error"] is None
    start = doc.get("start") or {}
    proto = (start.get("test_start") or {}).get("protocol")
    out["protocol"] = proto
    end = doc.get("end") or {}
    sent = end.get("sum_sent") or {}
    recv = end.get("sum_received") or {}
    if "bits_per_second" in sent:
        out["sent_mbps"] = sent["bits_per_second"] / 1e6
    if "bits_per_second" in recv and not (out["error"] and recv.get("bytes", 0) == 0):
        out["received_mbps"] = recv["bits_per_second"] / 1e6
    if proto == "TCP":
        out["retransmits"] = sent.get("retransmits")
    elif proto == "UDP":
        udp = recv if "jitter_ms" in recv else (end.get("sum") or {})
        if "jitter_ms" in udp and not (out["error"] and udp.get("packets", 0) == 0):
            out["jitter_ms"] = float(udp["jitter_ms"])
            out["lost_packets"] = udp.get("lost_packets")
            out["packets"] = udp.get("packets")
            out["lost_pct"] = float(udp.get("lost_percent", math.nan))
    for iv in doc.get("intervals") or []:
        s = iv.get("sum") or {}
        if "bits_per_second" not in s:
            continue
        row = {"start_s": float(s.get("start", math.nan)), "end_s": float(s.get("end", math.nan)),
               "mbps": s["bits_per_second"] / 1e6}
        if proto == "TCP":
            row["retransmits"] = s.get("retransmits")
        elif proto == "UDP":
            row["packets"] = s.get("packets")
        out["intervals"].append(row)
    if out["error"] is None and not math.isfinite(out["sent_mbps"]):
        out["complete"] = False
        out["error"] = "no end summary in the JSON document"
    return out


_LINE = re.compile(
    r"^(?:(?P<t>\d+(?:\.\d+)?)\s+)?\[\s*\d+\]\s+(?P<a>[\d.]+)-(?P<b>[\d.]+)\s+sec\s+[\d.]+\s+\w?Bytes\s+"
    r"(?P<rate>[\d.]+)\s+(?P<unit>[KMGT]?)bits/sec(?P<rest>.*)$")
_UDP_REST = re.compile(r"(?P<jit>[\d.]+)\s+ms\s+(?P<lost>-?\d+)/(?P<total>\d+)\s+\((?P<pct>[-\d.e+]+)%\)")


def parse_iperf_text(text: str) -> dict[str, Any]:
    """Summarise an iperf3 server's plain-text log (written with ``--timestamps=%s --forceflush``).

    Returns
    -------
    dict
        ``intervals``: list of dicts ``t_unix_s`` (when the line was written; NaN without
        timestamps), ``start_s``, ``end_s``, ``mbps`` and, for UDP, ``jitter_ms``, ``lost_packets``,
        ``packets``, ``lost_pct``; ``received_mbps`` (from the final ``receiver`` line if the test
        ended, else the mean of the intervals; NaN if none); ``complete`` (the final line is there).
        Truncated or foreign lines are skipped.
    """
    intervals: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    final: dict[str, Any] | None = None
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        rest = m.group("rest")
        row: dict[str, Any] = {
            "t_unix_s": float(m.group("t")) if m.group("t") else math.nan,
            "start_s": float(m.group("a")), "end_s": float(m.group("b")),
            "mbps": float(m.group("rate")) * _UNITS[m.group("unit")] / 1e6}
        u = _UDP_REST.search(rest)
        if u:
            row.update(jitter_ms=float(u.group("jit")), lost_packets=int(u.group("lost")),
                       packets=int(u.group("total")), lost_pct=float(u.group("pct")))
        if rest.strip().endswith(("receiver", "sender")):
            if rest.strip().endswith("receiver") or final is None:
                final = row
            continue
        key = (m.group("a"), m.group("b"))
        if key in seen:  # iperf3 repeats the last interval line before its summary
            continue
        seen.add(key)
        intervals.append(row)
    if final is not None:
        received = final["mbps"]
    elif intervals:
        received = sum(r["mbps"] for r in intervals) / len(intervals)
    else:
        received = math.nan
    return {"complete": final is not None, "received_mbps": received, "intervals": intervals,
            "final": final}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emulator.traffic.iperf",
                                description="Parse an iperf3 client JSON or server text log; print JSON.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("parse")
    r.add_argument("file")
    a = p.parse_args(argv)
    try:
        with open(a.file, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:
        print(f"iperf: {e}", file=sys.stderr)
        return 1
    res = parse_iperf_json(text) if text.lstrip().startswith("{") else parse_iperf_text(text)
    json.dump(res, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
