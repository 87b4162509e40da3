"""A Ray cluster on the fake hosts of :mod:`emulator.cluster.lab`: one Ray node started inside each fake
host's namespace with that host's underlay address, as a real cluster runs one per machine.

Ray is the distributed engine issue 13 settles on (actors pinned to hosts by node resources, no RPC of
our own). This module starts and stops it on the lab and probes it; it builds no emulation. Settings, and
why:

* token authentication (``RAY_AUTH_MODE=token``, Ray >= 2.52): the token is 32 random bytes in a file
  readable by root only (``RAY_AUTH_TOKEN_PATH``), never on a command line; a driver without it is refused
  (``AuthenticationError: RPC error: InvalidAuthToken`` from the GCS, whether the client sends a wrong token
  or none);
* each node started as ``satnetem cluster start`` starts a real host's (:mod:`emulator.cluster.raynode`: the
  same ``ray start`` arguments and environment): no dashboard, no usage statistics, no log monitor, Ray's
  memory monitor off, an 80 MB object store, every port fixed, and the guard table that drops TCP to Ray's
  ports arriving on any interface but the fake host's underlay and ``lo`` (in the fake host's own network
  namespace);
* ``--num-cpus=0``: nothing reserves a CPU (the agents are ``num_cpus=0`` actors) and Ray starts no idle
  Python worker ahead of time (with one CPU it prestarts one per node: the head then took 21 s to start
  under a load average of 6.7 against 3 s with none);
* each node offers the resource ``satnetem-host-<h>`` (1 unit): an actor asking for it runs on that host
  and nowhere else.

Measured here (2 cores shared with other work, load average 3.5-6.7, Ray 2.60): head 3.0-3.2 s, each worker
1.9-3.6 s, a driver's connection 0.2-0.8 s, one actor per host placed and answering 1.3-2.5 s. Idle, the
three nodes are 12 processes (gcs, raylet, dashboard agent and runtime-env agent per node, the autoscaler
monitor and a minimal dashboard process on the head) holding 817 MB of RSS and 2.7 % of one core. Ray's
GCS and raylets listen on every address of their namespace (``*:6379`` and two raylet ports): the guard
keeps them to the underlay. A driver without the token is refused after ~20 s of the client's retries.

Teardown kills every process inside the lab's namespaces by pid (:meth:`FakeHosts.kill_inside`), never
``ray stop``, which kills every Ray process of the machine by name.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from topologies.errors import ApplyError

from .clocks import offset
from .lab import FakeHosts
from .raynode import guard_on, interface_of, node_argv, node_env, resource

log = logging.getLogger(__name__)

#: The GCS port on the head.
HEAD_PORT = 6379
START_TIMEOUT_S = 120.0


class RayLab:
    """Ray nodes on every fake host of ``lab`` (already started). A context manager.

    Parameters
    ----------
    lab : FakeHosts
    ray_bin : str, optional
        The ``ray`` program (default: the one beside this Python).
    """

    def __init__(self, lab: FakeHosts, ray_bin: str | None = None) -> None:
        self.lab = lab
        self.ray_bin = ray_bin or str(Path(sys.executable).with_name("ray"))
        self._dir: str | None = None
        self.start_s: dict[str, float] = {}

    @property
    def head(self) -> str:
        return f"{self.lab.address(0)}:{HEAD_PORT}"

    @property
    def token_path(self) -> str:
        if self._dir is None:
            raise ApplyError("Ray is not started on the lab", operation="ray")
        return os.path.join(self._dir, "token")

    def env(self, token: str = "ours") -> dict[str, str]:
        """Environment of Ray's processes and drivers. ``token``: ``ours`` (the cluster's), ``wrong`` (a
        random one), ``none`` (authentication off in the client), for tests of the refusal."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        env.update(RAY_USAGE_STATS_ENABLED="0", RAY_memory_monitor_refresh_ms="0")
        if token == "ours":
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=self.token_path)
        elif token == "wrong":
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        elif token != "none":
            raise ValueError(f"token must be ours, wrong or none, got {token!r}")
        return env

    def __enter__(self) -> RayLab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _argv(self, h: int) -> list[str]:
        # a short temporary folder: Ray puts Unix sockets under it, whose paths may not exceed 107 bytes
        assert self._dir is not None
        return node_argv(self.ray_bin, "head" if h == 0 else "worker", self.lab.address(h), h, head=self.head,
                         temp_dir=f"{self._dir}/ray")

    def _prefix(self, h: int) -> list[str]:
        return ["nsenter", f"--net={self.lab.host_path(h)}", "--"]

    def guard(self, h: int) -> str:
        """Put the guard table up in fake host ``h`` (as ``satnetem cluster start`` does on a real host); the
        interface it leaves Ray's ports reachable on."""
        iface = interface_of(self.lab.address(h), self._prefix(h))
        guard_on(iface, prefix=self._prefix(h))
        return iface

    def start(self) -> None:
        """Write the token, start the head in host 0, then the other hosts' nodes one after the other (``ray
        start`` gives a node 30 s to register, a figure Ray hard-codes: two started together on two loaded
        cores missed it, load average 6.7)."""
        self._dir = tempfile.mkdtemp(prefix="snr-")  # 0700
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            for h in range(self.lab.config.n_hosts):
                self.guard(h)
            t0 = time.perf_counter()
            self._wait([self._popen(0)], "head")
            self.start_s["head"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            for h in range(1, self.lab.config.n_hosts):
                self._wait([self._popen(h)], "workers")
            self.start_s["workers"] = time.perf_counter() - t1
        except BaseException:
            self.stop()
            raise
        log.info("ray on %d fake hosts: head %.1f s, workers %.1f s", self.lab.config.n_hosts,
                 self.start_s["head"], self.start_s["workers"])

    def _popen(self, h: int) -> tuple[int, subprocess.Popen[str]]:
        env = node_env(self.token_path, self.lab.address(h), self.env())
        return h, self.lab.popen(self.lab.host_name(h), self._argv(h), env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)

    def _wait(self, procs: list[tuple[int, subprocess.Popen[str]]], what: str) -> None:
        for h, p in procs:
            try:
                out, _ = p.communicate(timeout=START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise ApplyError(f"ray start on {self.lab.host_name(h)} did not end in {START_TIMEOUT_S:g} s",
                                 operation=f"ray {what}") from None
            if p.returncode != 0:
                last = " | ".join(out.strip().splitlines()[-3:])
                raise ApplyError(f"ray start on {self.lab.host_name(h)} failed ({p.returncode}): {last}",
                                 operation=f"ray {what}")

    def probe(self, token: str = "ours", timeout_s: float = 180.0) -> dict[str, Any]:
        """Run :func:`probe_main` as a driver in host 0: one actor per host; its JSON answer, or ApplyError
        with the driver's last lines."""
        argv = [sys.executable, "-m", "emulator.cluster.raylab", self.head, str(self.lab.config.n_hosts)]
        p = self.lab.popen(self.lab.host_name(0), argv, env=self.env(token), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, cwd=str(Path(__file__).resolve().parents[2]))
        try:
            out, err = p.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise ApplyError(f"the Ray probe did not end in {timeout_s:g} s", operation="ray probe") from None
        if p.returncode != 0:
            why = [ln for ln in err.splitlines() if "Error" in ln]
            last = " | ".join(why[-3:] or err.strip().splitlines()[-2:])
            raise ApplyError(f"the Ray probe failed ({p.returncode}): {last}", operation="ray probe")
        return dict(json.loads(out.strip().splitlines()[-1]))

    def stop(self) -> None:
        """Kill every process in the lab's namespaces (Ray's) and remove the token and Ray's files."""
        self.lab.kill_inside()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def probe_main(head: str, n_hosts: int) -> dict[str, Any]:
    """The driver of :meth:`RayLab.probe`: connect to ``head``, place one actor on each host by its resource,
    and ask each where it runs: its source address towards the head, its network namespace (inode), the
    versions of Python, Ray and satnetem there, and its clock against the driver's
    (:func:`emulator.cluster.clocks.offset` of 10 round trips)."""
    import ray

    t0 = time.perf_counter()
    ray.init(address=head, logging_level=logging.WARNING, log_to_driver=False)
    t1 = time.perf_counter()

    class Where:
        def where(self, toward: str) -> dict[str, Any]:
            import importlib.metadata
            import platform
            import socket

            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.connect((toward, 9))  # no packet is sent: only the route and source address are chosen
                addr = s.getsockname()[0]
            finally:
                s.close()
            return {"addr": addr, "netns": os.stat("/proc/self/ns/net").st_ino, "pid": os.getpid(),
                    "python": platform.python_version(), "ray": ray.__version__,
                    "satnetem": importlib.metadata.version("satnetem")}

        def now_ns(self) -> int:
            return time.time_ns()

    try:
        actor: Any = ray.remote(num_cpus=0)(Where)  # an actor class: reserves no CPU
        actors = [actor.options(resources={resource(h): 1}).remote() for h in range(n_hosts)]
        agents = ray.get([a.where.remote(head.rsplit(":", 1)[0]) for a in actors], timeout=120)
        t2 = time.perf_counter()
        for a, agent in zip(actors, agents):  # each host's clock against the driver's, from 10 round trips
            samples = []
            for _ in range(10):
                s0 = time.time_ns()
                s1 = ray.get(a.now_ns.remote(), timeout=30)
                samples.append((s0, s1, time.time_ns()))
            off = offset(*(np.array(c, np.int64) for c in zip(*samples)))
            agent["clock"] = {"offset_ms": off.offset_ms, "bound_ms": off.bound_ms}
        return {"connect_s": t1 - t0, "actors_s": t2 - t1, "nodes": len(ray.nodes()), "agents": agents}
    finally:
        ray.shutdown()


if __name__ == "__main__":
    print(json.dumps(probe_main(sys.argv[1], int(sys.argv[2]))), flush=True)
