"""Routes sent without acknowledgements, many namespaces per call (emulator/rtnl.run_packed_many): every
failure comes back with its row and namespace, whatever the batch it was in, and what succeeded is in
the kernel (read back with `ip route`, not through the product)."""

from __future__ import annotations

import errno
import ipaddress
import os
import subprocess
import time

import numpy as np
import pytest

from emulator import rtnl

pytestmark = pytest.mark.root


def ip(s: str) -> int:
    return int(ipaddress.IPv4Address(s))


@pytest.fixture
def two_namespaces():
    names = [f"t-rtnl-{os.getpid()}-{k}" for k in range(2)]
    try:
        for n in names:
            subprocess.run(["ip", "netns", "add", n], check=True)
            for cmd in (["link", "add", "a0", "type", "veth", "peer", "name", "b0"],
                        ["addr", "add", "10.0.0.1/24", "dev", "a0"], ["addr", "add", "10.9.0.1/32", "dev", "lo"],
                        ["link", "set", "a0", "up"], ["link", "set", "b0", "up"], ["link", "set", "lo", "up"]):
                subprocess.run(["ip", "-n", n, *cmd], check=True)
        yield names
    finally:
        for n in names:
            subprocess.run(["ip", "netns", "del", n], check=False)


def routes_in(ns: str) -> set[str]:
    out = subprocess.run(["ip", "-n", ns, "-4", "route", "show", "proto", "static"], capture_output=True,
                         text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines()}


@pytest.fixture(params=["c", "python"])
def sender(request, monkeypatch):
    """Each test runs with the C sender install.sh builds (emulator/kernel/rtsend.c) and with the Python loop."""
    if request.param == "c":
        assert rtnl.RTSEND_LIBRARY.exists(), "install.sh builds the C route sender"
        monkeypatch.setattr(rtnl, "_c_send", [])
        assert rtnl._c_sender() is not None
    else:
        monkeypatch.setattr(rtnl, "_c_send", [None])
    return request.param


@pytest.mark.parametrize("pace", [0, 20_000])
def test_failures_come_back_with_row_and_namespace(two_namespaces, sender, pace):
    """Also paced (routes sent ahead of their step, rtnl.AHEAD_PACE): in sends of PACE_CHUNK messages, each
    sending thread no faster than the pace (timed here), the same failures and routes."""
    ns0, ns1 = two_namespaces
    ifindex = [int(subprocess.run(["ip", "-n", n, "-o", "link", "show", "a0"], capture_output=True, text=True,
                                  check=True).stdout.split(":")[0]) for n in two_namespaces]
    # ns0: 3 routes then, after more than one batch (_BATCH = 256), one via a gateway off every subnet;
    # ns1: 2 good routes and one bad
    n0 = 600
    dst = [ip("172.16.0.0") + 256 * k for k in range(n0)] + [ip("172.20.0.0"), ip("172.20.1.0"), ip("172.20.2.0")]
    gw = [ip("10.0.0.2")] * n0 + [ip("10.0.0.2"), ip("192.0.2.7"), ip("10.0.0.3")]
    bad = {n0 - 1: 0, n0 + 1: 1}  # row -> handle index
    gw[n0 - 1] = ip("198.51.100.1")
    oif = [ifindex[0]] * n0 + [ifindex[1]] * 3
    n = len(dst)
    msgs = rtnl.route_msgs(np.array(dst), np.full(n, 24), np.array(gw), np.array(oif), np.full(n, ip("10.9.0.1")))
    handles = [rtnl.Rtnl(f"/run/netns/{ns}", ns) for ns in two_namespaces]
    try:
        t0 = time.monotonic()
        fails = rtnl.run_packed_many(handles, msgs, np.array([0, n0, n]), pace=pace)
        took = time.monotonic() - t0
        if pace:  # ns0's slice goes from one thread; its last send may come 1 ms (Python) or 0.2 ms (C) early
            assert took >= (n0 - rtnl.PACE_CHUNK) / pace - 0.001, (took, n0 / pace)
        assert {(row, tag) for row, _err, tag in fails} == set(bad.items())
        assert {err for _row, err, _tag in fails} == {errno.ENETUNREACH}
        want0 = {f"{ipaddress.IPv4Address(d)}/24" for k, d in enumerate(dst[:n0]) if k not in bad}
        want1 = {f"{ipaddress.IPv4Address(d)}/24" for k, d in enumerate(dst[n0:], n0) if k not in bad}
        assert routes_in(ns0) == want0 and routes_in(ns1) == want1
        # deletes: one that exists, one that does not (ESRCH, ignored when asked)
        dels = rtnl.route_del_msgs(np.array([dst[0], ip("172.31.0.0")]), np.array([24, 24]))
        assert [(r, e) for r, e, _ in rtnl.run_packed_many([handles[0]], dels.copy(), np.array([0, 2]))] \
            == [(1, errno.ESRCH)]
        assert rtnl.run_packed_many([handles[0]], dels, np.array([0, 2]), ignore=(errno.ESRCH, )) == []
        assert f"{ipaddress.IPv4Address(dst[0])}/24" not in routes_in(ns0)
    finally:
        for h in handles:
            h.close()


def test_two_sending_threads(two_namespaces, monkeypatch):
    """With the C sender a call of more than 2 x 512 slices is split over two threads: every failure still
    comes back with its row and handle, and every other route is in the kernel."""
    monkeypatch.setenv("SATNETEM_RTSEND_THREADS", "2")
    monkeypatch.setattr(rtnl, "_c_send", [])
    assert rtnl._c_sender() is not None, "install.sh builds the C route sender"
    ns0 = two_namespaces[0]
    ifindex = int(subprocess.run(["ip", "-n", ns0, "-o", "link", "show", "a0"], capture_output=True, text=True,
                                 check=True).stdout.split(":")[0])
    n = 1500  # one route per slice, all in one namespace (one handle, repeated)
    dst = np.array([ip("172.16.0.0") + 256 * k for k in range(n)])
    gw = np.full(n, ip("10.0.0.2"))
    bad = [3, 1400]  # one in each thread's half
    gw[bad] = ip("198.51.100.1")
    msgs = rtnl.route_msgs(dst, np.full(n, 24), gw, np.full(n, ifindex), np.full(n, ip("10.9.0.1")))
    h = rtnl.Rtnl(f"/run/netns/{ns0}", ns0)
    try:
        fails = rtnl.run_packed_many([h] * n, msgs, np.arange(n + 1))
        # rows exactly; the handle index is one whose socket held the report (here every slice shares one)
        assert sorted(row for row, _e, _tag in fails) == bad and {err for _r, err, _t in fails} == {errno.ENETUNREACH}
        assert routes_in(ns0) == {f"{ipaddress.IPv4Address(int(d))}/24" for k, d in enumerate(dst) if k not in bad}
    finally:
        h.close()


@pytest.mark.parametrize("threads", ["1", "2"])
def test_held_is_called_once_when_the_sends_start(two_namespaces, sender, threads, monkeypatch):
    """``held`` (the caller's signal that this call's Python is done) runs exactly once: from one thread after
    the sockets are held and before the first send (the kernel, read with `ip route` from inside the callback,
    has none of the routes yet); from two when both hold their sockets. Once too when the call fails."""
    monkeypatch.setenv("SATNETEM_RTSEND_THREADS", threads)
    monkeypatch.setattr(rtnl, "_POLL_GROUP", 1)  # two namespaces are enough for two threads
    ifindex = [int(subprocess.run(["ip", "-n", ns, "-o", "link", "show", "a0"], capture_output=True, text=True,
                                  check=True).stdout.split(":")[0]) for ns in two_namespaces]
    n = 600  # per namespace
    dst = np.array([ip("172.16.0.0") + 256 * k for k in range(n)] * 2)
    msgs = rtnl.route_msgs(dst, np.full(2 * n, 24), np.full(2 * n, ip("10.0.0.2")), np.repeat(ifindex, n),
                           np.full(2 * n, ip("10.9.0.1")))
    handles = [rtnl.Rtnl(f"/run/netns/{ns}", ns) for ns in two_namespaces]
    seen: list[int] = []
    try:
        def held() -> None:
            seen.append(sum(len(routes_in(ns)) for ns in two_namespaces))
        assert rtnl.run_packed_many(handles, msgs, np.array([0, n, 2 * n]), held=held) == []
        assert len(seen) == 1 and all(len(routes_in(ns)) == n for ns in two_namespaces)
        if threads == "1" or sender == "python":
            assert seen == [0]
        calls: list[int] = []
        gone = rtnl.Rtnl(f"/run/netns/t-rtnl-{os.getpid()}-gone", "gone")  # no such namespace: holding it fails
        try:
            with pytest.raises(Exception, match="gone"):
                rtnl.run_packed_many([handles[0], gone], msgs.copy(), np.array([0, n, 2 * n]),
                                     held=lambda: calls.append(1))
        finally:
            gone.close()
        assert calls == [1]
    finally:
        for h in handles:
            h.close()
