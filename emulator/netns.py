"""Entering network namespaces from one process, without forking a helper per namespace.

A netlink socket stays bound to the namespace it was created in. So the emulator opens one
``IPRoute`` per namespace by switching this thread into the namespace with ``setns(2)``, creating
the socket, and switching back. Python 3.11 has no ``os.setns``; libc's is called through ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator

from topologies.errors import ApplyError

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling thread into the namespace open at ``fd``."""
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(path: str, node: str | None = None) -> Iterator[None]:
    """Run the body inside the network namespace at ``path`` (a /proc/PID/ns/net or a bind mount).

    Sockets created in the body stay in that namespace after it exits. Only this thread moves.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            target = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise ApplyError(f"cannot open network namespace {path}: {e.strerror}", node=node,
                             operation="setns") from None
        try:
            setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            setns(own)
    finally:
        os.close(own)


def iproute_in(path: str, node: str | None = None):
    """Return a pyroute2 ``IPRoute`` whose socket lives in the namespace at ``path``."""
    from pyroute2 import IPRoute

    with entered(path, node):
        return IPRoute()
