"""The memory figures a run prints (emulator.kernel.memory), against the kernel read another way: namespaces
made by the test and counted by the helper, PSS against the sum of smaps' per-mapping Pss lines, meminfo
against a plain parse."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from emulator.kernel.memory import (
    meminfo_kb,
    net_namespaces,
    pss_kb,
    settle_net_namespaces,
    slab_slack,
    wait_net_namespaces,
)

pytestmark = pytest.mark.root

# holds N new network namespaces by descriptor until stdin closes
HOLDER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
own = os.open("/proc/self/ns/net", os.O_RDONLY)
held = []
for _ in range(int(sys.argv[1])):
    assert libc.unshare(0x40000000) == 0
    held.append(os.open("/proc/self/ns/net", os.O_RDONLY))
    assert libc.setns(own, 0x40000000) == 0
print("held", flush=True)
sys.stdin.read()
"""


def test_namespaces_counted_and_seen_freed():
    before = settle_net_namespaces()  # earlier tests' dead namespaces freed first, or they go while we count
    assert before is not None and before >= 1  # the machine's own
    n = 400  # well beyond the allocator's slack (slab_slack: objects of cached slabs count as in use)
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        held = net_namespaces()
        assert held is not None and held >= before + n - slab_slack(), (before, held)
    finally:
        p.stdin.close()
        p.wait(timeout=30)
    waited, left = wait_net_namespaces(before, 30.0)
    assert left == 0, (waited, left)
    assert net_namespaces() <= before + slab_slack()


def test_pss_is_the_sum_of_the_mappings():
    total = 0
    with open(f"/proc/{os.getpid()}/smaps") as f:
        for line in f:
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    got = pss_kb({os.getpid()})
    assert abs(got - total) <= max(256, 0.02 * total), (got, total)  # the interpreter allocates in between
    assert pss_kb({os.getpid(), 2**22 + 1}) == pytest.approx(got, rel=0.02)  # a pid that is not there counts 0
    assert pss_kb() >= got  # and the default counts this process and its descendants


def test_meminfo_fields():
    plain = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":")
            plain[k] = int(v.split()[0])
    got = meminfo_kb("MemTotal", "Slab", "NoSuchField")
    assert set(got) == {"MemTotal", "Slab"}
    assert got["MemTotal"] == plain["MemTotal"]
    assert abs(got["Slab"] - plain["Slab"]) <= 0.05 * plain["Slab"]

