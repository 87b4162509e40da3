"""DelayDaemon._exchange's deadline runs from the last answer: a daemon that keeps answering slowly (a large
attach in the TCG VM) is waited for, one that falls silent fails after reply_timeout_s. A fake shard on a
socketpair stands in for the compiled daemon, so no root is needed."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from emulator.shaping.delayd import DelayDaemon, _Shard
from topologies.errors import ApplyError


def fake_shard(answers: int, gap_s: float) -> tuple[_Shard, threading.Thread]:
    """A shard whose other end reads the requests, then answers ``answers`` of them, ``gap_s`` apart."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def serve() -> None:
        with theirs:
            theirs.recv(1 << 16)
            for _ in range(answers):
                time.sleep(gap_s)
                theirs.sendall(b"ok\n")
            time.sleep(3.0)  # then silence, with the socket still open

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return _Shard(0, None, ours), t  # type: ignore[arg-type]  # proc is only read when a shard dies


def test_a_slow_daemon_that_keeps_answering_is_waited_for() -> None:
    d = DelayDaemon(shards=1, rt_priority=0, reply_timeout_s=0.5)
    shard, _t = fake_shard(answers=6, gap_s=0.2)  # 1.2 s in all, more than twice the timeout
    t0 = time.monotonic()
    replies = d._exchange({shard: [f"req {i}" for i in range(6)]}, "test")[shard]
    assert replies == ["ok"] * 6
    assert time.monotonic() - t0 >= 1.1


def test_a_daemon_that_falls_silent_fails_after_the_timeout() -> None:
    d = DelayDaemon(shards=1, rt_priority=0, reply_timeout_s=0.5)
    shard, _t = fake_shard(answers=2, gap_s=0.2)  # then nothing for 3 s
    t0 = time.monotonic()
    with pytest.raises(ApplyError, match="answered nothing for 0.5 s"):
        d._exchange({shard: [f"req {i}" for i in range(6)]}, "test")
    assert 0.8 <= time.monotonic() - t0 < 2.0  # 0.4 s of answers, then the timeout
