"""The userspace shaper's arrival-stamp program, run by the kernel (BPF_PROG_TEST_RUN) on a packet whose
``__sk_buff`` carries a time stamp: what the program leaves in ``mark`` and ``tstamp`` is read back and
compared with the test's own CLOCK_MONOTONIC readings taken around the run (issue 15: this replaces a
test that restated the instruction bytes)."""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import time

import pytest

from emulator.shaping.userspace import load_clear_tstamp_prog

pytestmark = pytest.mark.root

BPF_PROG_TEST_RUN = 10
SYS_BPF = {"x86_64": 321, "aarch64": 280}
SKB_SIZE = 192  # sizeof(struct __sk_buff), linux/bpf.h (6.x)
MARK_OFF, TSTAMP_OFF = 8, 152  # offsetof(struct __sk_buff, mark / tstamp)


def run_once(fd: int, tstamp_in: int) -> tuple[int, int, int]:
    """Run program ``fd`` once on a 64-byte IPv4 frame; return (retval, mark, tstamp) the kernel left."""
    frame = ctypes.create_string_buffer(b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + b"\x45" + b"\x00" * 49, 64)
    ctx_in = ctypes.create_string_buffer(SKB_SIZE)
    struct.pack_into("<Q", ctx_in, TSTAMP_OFF, tstamp_in)
    ctx_out = ctypes.create_string_buffer(SKB_SIZE)
    # union bpf_attr, the BPF_PROG_TEST_RUN member: prog_fd, retval, data_size_in, data_size_out, data_in,
    # data_out, repeat, duration, ctx_size_in, ctx_size_out, ctx_in, ctx_out (the rest zero)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("=IIIIQQIIIIQQ", attr, 0, fd, 0, 64, 0, ctypes.addressof(frame), 0, 1, 0,
                     SKB_SIZE, SKB_SIZE, ctypes.addressof(ctx_in), ctypes.addressof(ctx_out))
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.syscall(ctypes.c_long(SYS_BPF[platform.machine()]), ctypes.c_int(BPF_PROG_TEST_RUN), attr,
                      ctypes.c_uint(len(attr)))
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"BPF_PROG_TEST_RUN: {os.strerror(err)}")
    retval = struct.unpack_from("=I", attr, 4)[0]
    return retval, struct.unpack_from("<I", ctx_out, MARK_OFF)[0], struct.unpack_from("<Q", ctx_out, TSTAMP_OFF)[0]


def test_arrival_stamp_is_monotonic_us_in_mark_and_tstamp_is_cleared():
    fd = load_clear_tstamp_prog()
    try:
        for _ in range(20):
            before_us = time.monotonic_ns() // 1000
            retval, mark, tstamp = run_once(fd, tstamp_in=1_234_567_890_123)
            after_us = time.monotonic_ns() // 1000
            assert retval == 0  # TC_ACT_OK: the packet goes on
            assert tstamp == 0
            # mark is the arrival time in us modulo 2^32 (the delay daemon unwraps it against its own clock)
            assert (mark - before_us) % 2**32 <= after_us - before_us, (before_us, mark, after_us)
    finally:
        os.close(fd)
