"""Routing daemons in the node namespaces: BIRD 2 processes with their own files, and their control sockets.

Each daemon of run ``<run_id>`` has its configuration and control socket in
``/run/satnetem/<run_id>/bird/<node>.{conf,ctl}`` (never the host's /etc/bird or /run/bird) and logs
to ``<log_dir>/<node>.log`` (default: the same folder). The daemons run in the foreground inside
their node's namespace (``bird -f``), so they are children of the emulator and, living in our
namespaces, are found and killed by :mod:`emulator.clean` too; ``satnetem clean`` also removes the
run folder.

The control protocol is BIRD's own (what ``birdc`` speaks): reply lines ``NNNN-text`` continue a
reply, ``NNNN text`` ends it, codes from 8000 up are errors. Talking to the socket directly instead of
forking ``birdc`` keeps a reconfiguration of a thousand daemons under a second.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

from topologies.errors import ApplyError

from .clean import STATE_DIR, kill_and_wait

log = logging.getLogger(__name__)

BIRD = "bird"
_REPLY = re.compile(rb"^(\d{4})([ -])(.*)$")
#: Sockets opened at once when many daemons are reconfigured (bounded by the open-file limit).
_BATCH = 256


def run_dir(run_id: str) -> Path:
    """Folder of run ``run_id``'s daemon files: ``/run/satnetem/<run_id>``."""
    return STATE_DIR / run_id


class BirdControl:
    """One connection to a BIRD control socket.

    Parameters
    ----------
    path : str or Path
        The socket (``bird -s``).
    node : str
        Node name, for error messages.
    timeout_s : float
        Per-read timeout, s.
    """

    def __init__(self, path: str | Path, node: str = "", timeout_s: float = 10.0) -> None:
        self.node = node
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        self._buf = b""
        try:
            self.sock.connect(str(path))
            self.read_reply()  # greeting: 0001 BIRD <version> ready.
        except (OSError, ApplyError) as e:
            self.sock.close()
            raise ApplyError(f"cannot talk to BIRD at {path}: {e}", node=node, operation="bird control") from None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self) -> bytes:
        while b"\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ApplyError("BIRD closed the control socket", node=self.node, operation="bird control")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def read_reply(self) -> tuple[int, str]:
        """Read one whole reply; return (final code, text of all its lines)."""
        lines = []
        while True:
            raw = self._line()
            m = _REPLY.match(raw)
            if m is None:  # continuation: " text" or "+async message"
                lines.append(raw[1:].decode(errors="replace"))
                continue
            lines.append(m.group(3).decode(errors="replace"))
            if m.group(2) == b" ":
                return int(m.group(1)), "\n".join(lines)

    def send(self, command: str) -> None:
        if "\n" in command:
            raise ValueError(f"a BIRD command is one line, got {command!r}")
        self.sock.sendall(command.encode() + b"\n")

    def command(self, command: str) -> str:
        """Run ``command`` (as typed into ``birdc``) and return its output.

        Raises
        ------
        ApplyError
            BIRD answered with an error code (>= 8000).
        """
        self.send(command)
        code, text = self.read_reply()
        if code >= 8000:
            raise ApplyError(f"BIRD refused {command!r}: {code} {text}", node=self.node, operation="bird control")
        return text


class BirdDaemons:
    """The BIRD daemons of one run: start, reconfigure, query, stop.

    Parameters
    ----------
    run_id : str
        The emulation's run id (names the folder of configurations and sockets).
    log_dir : str or Path, optional
        Where each daemon's ``<node>.log`` goes (created if missing; kept at :meth:`stop`). Default:
        the run's daemon folder, removed at :meth:`stop`.
    bird : str
        The ``bird`` executable.
    """

    def __init__(self, run_id: str, log_dir: str | Path | None = None, bird: str = BIRD) -> None:
        self.dir = run_dir(run_id) / "bird"
        self.log_dir = Path(log_dir) if log_dir is not None else self.dir
        self.bird = shutil.which(bird) or bird
        self.procs: dict[str, subprocess.Popen] = {}
        self._stopped = False

    # ------------------------------------------------------------------------------ files
    def conf_path(self, node: str) -> Path:
        return self.dir / f"{node}.conf"

    def ctl_path(self, node: str) -> Path:
        return self.dir / f"{node}.ctl"

    def log_path(self, node: str) -> str:
        return str(self.log_dir / f"{node}.log")

    def _write(self, node: str, text: str) -> None:
        """Replace ``node``'s configuration atomically (BIRD may read it at any time)."""
        path = self.conf_path(node)
        tmp = path.with_suffix(".conf.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    # ------------------------------------------------------------------------------ lifecycle
    def start(self, nodes: Iterable[tuple[Any, str]], timeout_s: float = 60.0) -> None:
        """Start one daemon per (node, configuration text) and wait until each answers on its socket.

        ``node`` is an :class:`emulator.nodes.EmuNode` (its ``popen`` runs a process in its namespace).

        Raises
        ------
        ApplyError
            ``bird`` is missing, a daemon exited (its configuration error is in the message) or did
            not answer within ``timeout_s``; every daemon already started is stopped first.
        """
        if not shutil.which(self.bird):
            raise ApplyError(f"{self.bird!r} not found: install BIRD 2 (Debian package bird2)",
                             operation="start bird")
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for node, text in nodes:
                name = node.name
                self._write(name, text)
                self.ctl_path(name).unlink(missing_ok=True)
                with open(self.dir / f"{name}.err", "wb") as err:
                    self.procs[name] = node.popen(
                        [self.bird, "-f", "-c", str(self.conf_path(name)), "-s", str(self.ctl_path(name))],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, close_fds=True)
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        waiting = dict(self.procs)
        while waiting:
            for name, proc in list(waiting.items()):
                if proc.poll() is not None:
                    err = (self.dir / f"{name}.err").read_text(errors="replace").strip()
                    raise ApplyError(f"bird exited with status {proc.returncode}: {err}", node=name,
                                     operation="start bird")
                if self.ctl_path(name).exists():
                    try:
                        BirdControl(self.ctl_path(name), name, timeout_s=2.0).close()
                    except ApplyError:
                        continue
                    del waiting[name]
            if waiting and time.monotonic() > deadline:
                raise ApplyError(f"{len(waiting)} BIRD daemons did not answer within {timeout_s:.0f} s",
                                 node=next(iter(waiting)), operation="start bird")
            if waiting:
                time.sleep(0.02)

    def reconfigure(self, items: Iterable[tuple[str, str]]) -> None:
        """Give each (node, configuration text) to its daemon: rewrite the file, then ``configure``.

        BIRD applies a changed interface cost in place (the adjacency stays up and the router-LSA is
        re-originated) and starts or stops OSPF on interfaces that appear in or vanish from the file.
        The daemons are asked in batches and reconfigure in parallel.

        Raises
        ------
        ApplyError
            A daemon refused the configuration or did not answer.
        """
        items = list(items)
        for i in range(0, len(items), _BATCH):
            batch = items[i:i + _BATCH]
            conns = []
            try:
                for name, text in batch:
                    self._write(name, text)
                    c = BirdControl(self.ctl_path(name), name)
                    conns.append(c)
                    c.send("configure")
                for c in conns:
                    code, text = c.read_reply()
                    if code >= 8000:
                        raise ApplyError(f"BIRD refused its new configuration: {code} {text}", node=c.node,
                                         operation="bird configure")
            finally:
                for c in conns:
                    c.close()

    def command(self, node: str, command: str, timeout_s: float = 10.0) -> str:
        """Output of a ``birdc`` command (e.g. ``show ospf neighbors``) run on ``node``'s daemon."""
        with BirdControl(self.ctl_path(node), node, timeout_s) as c:
            return c.command(command)

    @property
    def pids(self) -> dict[str, int]:
        """Process id of each node's daemon."""
        return {name: p.pid for name, p in self.procs.items()}

    def rss_kb(self) -> dict[str, int]:
        """Resident memory of each running daemon, KiB."""
        out = {}
        for name, p in self.procs.items():
            try:
                for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out[name] = int(line.split()[1])
            except OSError:
                pass
        return out

    def stop(self) -> None:
        """Kill every daemon, reap it, and remove the configurations, sockets (and default-folder logs)."""
        if self._stopped:
            return
        self._stopped = True
        # the namespaces are about to go: no graceful OSPF shutdown, which would flood flush LSAs
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGKILL)
                except ProcessLookupError:
                    pass
        left = kill_and_wait({p.pid for p in self.procs.values() if p.poll() is None})
        for p in self.procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if left:
            log.warning("BIRD daemons still alive after SIGKILL: %s", left)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            self.dir.parent.rmdir()  # the run folder, if nothing else of the run is in it
        except OSError:
            pass
