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
import threading
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
#: How long a ``configure`` round may take before a daemon that has not answered is an error, s: BIRD
#: answers once it has re-read its file, which a daemon starved on a busy machine may take seconds to do.
RECONFIGURE_TIMEOUT_S = 120.0


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
        # background reconfiguration (reconfigure_later): nodes to ask, the worker, its first error
        self._cv = threading.Condition()
        self._queued: set[str] = set()
        self._busy = False
        self._worker: threading.Thread | None = None
        self._error: ApplyError | None = None

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
            for name in self.procs:  # BIRD makes its socket 0660 (group: -G); only root talks to ours.
                os.chmod(self.ctl_path(name), 0o600)  # Until now the 0700 folder kept everyone else out
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        """Until every daemon has greeted on its control socket, all asked at once.

        The daemons are connected to together and their greetings read as they come: asking them in
        turn, each with a short timeout, failed at 402 routers on two busy cores, where a daemon starved
        for seconds while all of them flooded their first LSAs (BIRD logged I/O loop cycles of 6-10 s)
        missed its 2 s turn again and again.
        """
        import selectors

        deadline = time.monotonic() + timeout_s
        waiting = dict(self.procs)
        conns: dict[str, tuple[socket.socket, bytearray]] = {}
        sel = selectors.DefaultSelector()
        try:
            while waiting:
                for name, proc in list(waiting.items()):
                    if proc.poll() is not None:
                        err = (self.dir / f"{name}.err").read_text(errors="replace").strip()
                        raise ApplyError(f"bird exited with status {proc.returncode}: {err}", node=name,
                                         operation="start bird")
                    if name in conns or not self.ctl_path(name).exists():
                        continue
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.setblocking(False)
                    try:
                        s.connect(str(self.ctl_path(name)))
                    except (BlockingIOError, InterruptedError, ConnectionRefusedError, FileNotFoundError):
                        s.close()  # listening backlog full or socket not yet listening: next round
                        continue
                    conns[name] = (s, bytearray())
                    sel.register(s, selectors.EVENT_READ, name)
                for key, _ in sel.select(timeout=0.05):
                    name = key.data
                    s, buf = conns[name]
                    try:
                        chunk = s.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        chunk = b""
                    buf += chunk
                    if b"\n" in buf or not chunk:
                        sel.unregister(s)
                        s.close()
                        del conns[name]
                        if chunk and _REPLY.match(bytes(buf.split(b"\n", 1)[0])):
                            del waiting[name]  # greeting "0001 BIRD <version> ready."
                if waiting and time.monotonic() > deadline:
                    raise ApplyError(f"{len(waiting)} BIRD daemons did not answer within {timeout_s:.0f} s",
                                     node=next(iter(waiting)), operation="start bird")
                if waiting and not conns:
                    time.sleep(0.02)
        finally:
            for s, _ in conns.values():
                s.close()
            sel.close()

    def reconfigure(self, items: Iterable[tuple[str, str]], timeout_s: float = RECONFIGURE_TIMEOUT_S) -> None:
        """Give each (node, configuration text) to its daemon: rewrite the file, then ``configure``.

        BIRD applies a changed interface cost in place (the adjacency stays up and the router-LSA is
        re-originated) and starts or stops OSPF on interfaces that appear in or vanish from the file.
        The daemons are asked together (in batches bounded by the open-file limit) and reconfigure in
        parallel; a slow daemon delays only its own answer.

        Raises
        ------
        ApplyError
            A daemon refused the configuration or did not answer within ``timeout_s``.
        """
        items = list(items)
        for name, text in items:
            self._write(name, text)
        self._configure([name for name, _ in items], timeout_s)

    def reconfigure_later(self, items: Iterable[tuple[str, str]]) -> None:
        """As :meth:`reconfigure`, but return once the files are written; a worker thread asks the daemons.

        The emulation's step must not wait for hundreds of daemons that share a few cores with it
        (at 402 routers on two busy cores one ``configure`` round took 19 s and made the step that
        long late). Nodes queued while the worker is busy are asked in its next round, with the text
        their file has then. A daemon that refused or did not answer fails the next call of this
        method, :meth:`wait_idle` or :meth:`check` with its :class:`ApplyError`.
        """
        self.check()
        names = []
        for name, text in items:
            self._write(name, text)
            names.append(name)
        if not names:
            return
        with self._cv:
            self._queued.update(names)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="bird-configure", daemon=True)
                self._worker.start()
            self._cv.notify_all()

    def check(self) -> None:
        """Raise the error of a background reconfiguration that failed (once)."""
        with self._cv:
            err, self._error = self._error, None
        if err is not None:
            raise err

    def wait_idle(self, timeout_s: float = RECONFIGURE_TIMEOUT_S) -> None:
        """Until every queued reconfiguration was answered; then :meth:`check`.

        Raises
        ------
        ApplyError
            One failed, or they were not all answered within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while self._queued or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ApplyError(f"BIRD reconfigurations still pending after {timeout_s:.0f} s",
                                     operation="bird configure")
                self._cv.wait(left)
        self.check()

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._queued and not self._stopped:
                    self._cv.wait()
                if self._stopped:
                    return
                names, self._queued = sorted(self._queued), set()
                self._busy = True
            try:
                self._configure(names, RECONFIGURE_TIMEOUT_S)
            except (ApplyError, OSError) as e:  # the worker must outlive one bad round
                err = e if isinstance(e, ApplyError) else ApplyError(f"BIRD control: {e}",
                                                                    operation="bird configure")
                with self._cv:
                    if not self._stopped:
                        log.error("%s", err)
                        self._error = self._error or err
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _configure(self, names: list[str], timeout_s: float) -> None:
        """Send ``configure`` to each named daemon and wait for every answer, all at once."""
        import selectors

        deadline = time.monotonic() + timeout_s
        for i in range(0, len(names), _BATCH):
            # per connection: socket, bytes read, whether "configure" was sent
            conns: dict[str, list[Any]] = {}
            sel = selectors.DefaultSelector()
            try:
                for name in names[i:i + _BATCH]:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    conns[name] = [s, b"", False]
                    s.settimeout(max(0.1, deadline - time.monotonic()))
                    try:
                        s.connect(str(self.ctl_path(name)))  # returns at once unless the backlog is full
                    except OSError as e:
                        raise ApplyError(f"cannot talk to BIRD at {self.ctl_path(name)}: {e}", node=name,
                                         operation="bird configure") from None
                    s.setblocking(False)
                    sel.register(s, selectors.EVENT_READ, name)
                while conns:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ApplyError(f"{len(conns)} BIRD daemons did not answer 'configure' within "
                                         f"{timeout_s:.0f} s", node=next(iter(conns)), operation="bird configure")
                    for key, _ in sel.select(timeout=min(left, 1.0)):
                        name = key.data
                        c = conns[name]
                        try:
                            chunk = c[0].recv(65536)
                        except BlockingIOError:
                            continue
                        except OSError:
                            chunk = b""
                        if not chunk:
                            raise ApplyError("BIRD closed the control socket", node=name,
                                             operation="bird configure")
                        c[1] += chunk
                        while b"\n" in c[1]:
                            line, c[1] = c[1].split(b"\n", 1)
                            m = _REPLY.match(line)
                            if m is None or m.group(2) != b" ":
                                continue  # a continuation line
                            code = int(m.group(1))
                            if not c[2]:  # the greeting: now ask
                                c[0].setblocking(True)
                                c[0].sendall(b"configure\n")
                                c[0].setblocking(False)
                                c[2] = True
                            elif code >= 8000:
                                raise ApplyError(f"BIRD refused its new configuration: {code} "
                                                 f"{m.group(3).decode(errors='replace')}", node=name,
                                                 operation="bird configure")
                            else:
                                sel.unregister(c[0])
                                c[0].close()
                                del conns[name]
                                break
            finally:
                for c in conns.values():
                    c[0].close()
                sel.close()

    def command(self, node: str, command: str, timeout_s: float = 10.0) -> str:
        """Output of a ``birdc`` command (e.g. ``show ospf neighbors``) run on ``node``'s daemon."""
        with BirdControl(self.ctl_path(node), node, timeout_s) as c:
            return c.command(command)

    def ended(self) -> str | None:
        """None while every daemon started runs; else a line naming the first one found ended and how (its
        routes stay in the kernel, frozen, while the links change). ``Popen.poll`` is a few microseconds
        per daemon."""
        if self._stopped:
            return None
        for name, p in list(self.procs.items()):
            rc = p.poll()
            if rc is not None and not self._stopped:
                how = f"killed by {signal.Signals(-rc).name}" if rc < 0 and -rc in signal.valid_signals() \
                    else f"status {rc}"
                return (f"BIRD daemon of {name} (pid {p.pid}) has ended ({how}): {name}'s routes are no longer "
                        f"kept")
        return None

    @property
    def pids(self) -> dict[str, int]:
        """Process id of each node's daemon."""
        return {name: p.pid for name, p in self.procs.items()}

    def cpu_s(self) -> float:
        """CPU time the running daemons have used so far (user + system), s, summed over all of them."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for p in self.procs.values():
            try:  # fields 14 and 15 (utime, stime) after the command name, which may hold spaces
                fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                pass
        return total / tick

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
        with self._cv:
            if self._stopped:
                return
            self._stopped = True
            self._queued.clear()
            self._cv.notify_all()
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
        if self._worker is not None:  # its sockets failed with the daemons: it ends with its round
            self._worker.join(timeout=RECONFIGURE_TIMEOUT_S)
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            self.dir.parent.rmdir()  # the run folder, if nothing else of the run is in it
        except OSError:
            pass
