"""This host's Ray node for a satnetem cluster, started as issue 13 asks, and the firewall table that keeps its
ports to the cluster's interface.

``satnetem cluster start`` starts the node: token authentication on (``RAY_AUTH_MODE=token``, the token read
from a root-only file, never on a command line), no dashboard, no usage statistics, no log monitor, Ray's memory
monitor off (an emulator's memory is kernel namespaces and qdiscs that Ray would blame on its workers), an 80 MB
object store, ``--num-cpus=0`` (the agents reserve none; Ray prestarts no idle worker), and the resource
``satnetem-host-<h>`` that pins host h's agent there. Every port Ray listens on is fixed (:class:`RayPorts`):
the GCS on the head, the raylet's node and object managers, its two agents, the metrics export, and a range for
the workers, the agents and the driver among them.

Ray 2.60 binds its GCS and raylet to every address of the host whatever ``--node-ip-address`` says (measured
with ``ss -ltnp`` in the fake hosts: ``*:6379`` and the raylet's two ports; Ray's pull request 59852 binds them
to the node's address in a later release). So the node comes with an nftables table, ``inet satnetem_ray``,
whose input hook drops TCP to those ports arriving on any interface but the cluster's (the one holding
``--address``) and ``lo``: from elsewhere Ray's ports are not reachable, as if bound to the cluster interface.
The table is the only firewall state satnetem creates, and only here; ``satnetem cluster stop`` removes it
with the node.

The node's processes are found by a mark in their environment (``SATNETEM_RAY_NODE``, inherited from ``ray
start`` by everything Ray starts), never by name: ``ray stop`` kills every Ray process of the machine.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from topologies.errors import ApplyError, ConfigError

log = logging.getLogger(__name__)

#: The nftables table of the guard (family inet: IPv4 and IPv6).
GUARD_TABLE = "satnetem_ray"
#: The environment variable that marks this node's processes (its value: the node's address).
MARK_ENV = "SATNETEM_RAY_NODE"
#: Object store of each node, bytes (Ray's minimum is 75 MB; the agents exchange small messages).
OBJECT_STORE_BYTES = 80_000_000
#: A kernel interface name nft may be given inside quotes (IFNAMSIZ - 1 characters of a conservative set).
_IFNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")


def resource(h: int) -> str:
    """The custom resource that pins an actor to host ``h``."""
    return f"satnetem-host-{h}"


@dataclass(frozen=True)
class RayPorts:
    """Every TCP port a Ray node of the cluster listens on.

    Attributes
    ----------
    gcs : int
        The GCS (head only), the cluster's address.
    node_manager, object_manager, runtime_env_agent, dashboard_agent_grpc, dashboard_agent_http, metrics : int
        The raylet's two servers, its runtime-environment agent, its dashboard agent (gRPC and HTTP) and the
        metrics export.
    worker_min, worker_max : int
        The range every worker process takes its port from (the agents and a driver among them).
    """

    gcs: int = 6379
    node_manager: int = 6380
    object_manager: int = 6381
    runtime_env_agent: int = 6382
    dashboard_agent_grpc: int = 6383
    dashboard_agent_http: int = 6384
    metrics: int = 6385
    worker_min: int = 6400
    worker_max: int = 6463

    def __post_init__(self) -> None:
        single = self.singles()
        for v in (*single, self.worker_min, self.worker_max):
            if isinstance(v, bool) or not isinstance(v, int) or not 1024 <= v <= 65535:
                raise ConfigError(f"Ray's ports must be integers in [1024, 65535], got {v!r}", key="ports")
        if self.worker_max - self.worker_min < 7:
            raise ConfigError(f"the workers' port range {self.worker_min}-{self.worker_max} must hold at least 8 "
                              f"ports", key="ports")
        if len(set(single)) != len(single) or any(self.worker_min <= p <= self.worker_max for p in single):
            raise ConfigError(f"Ray's ports must all differ and lie outside the workers' range, got {self}",
                              key="ports")

    def singles(self) -> tuple[int, ...]:
        return (self.gcs, self.node_manager, self.object_manager, self.runtime_env_agent,
                self.dashboard_agent_grpc, self.dashboard_agent_http, self.metrics)


def node_argv(ray_bin: str, role: str, address: str, host: int, head: str | None = None,
              ports: RayPorts | None = None, block: bool = False, temp_dir: str | None = None) -> list[str]:
    """``ray start`` for host ``host`` (the head is host 0) with the settings of the module docstring.

    Parameters
    ----------
    role : str
        ``head`` or ``worker``.
    address : str
        This host's address on the cluster's network (IPv4).
    head : str
        The head's ``IPV4:PORT`` (workers).
    block : bool
        ``ray start --block``: stay in the foreground until the node ends (a service manager's unit).
    temp_dir : str
        The head's temporary folder for Ray (its Unix sockets live there: at most ~60 characters).
    """
    p = ports or RayPorts()
    ipaddress.IPv4Address(address)  # callers check; a bad one must never reach an argument
    argv = [ray_bin, "start", f"--node-ip-address={address}", "--disable-usage-stats", "--num-cpus=0",
            f"--object-store-memory={OBJECT_STORE_BYTES}", "--include-log-monitor=false",
            f"--resources={json.dumps({resource(host): 1})}", f"--node-manager-port={p.node_manager}",
            f"--object-manager-port={p.object_manager}", f"--runtime-env-agent-port={p.runtime_env_agent}",
            f"--dashboard-agent-grpc-port={p.dashboard_agent_grpc}",
            f"--dashboard-agent-listen-port={p.dashboard_agent_http}", f"--metrics-export-port={p.metrics}",
            f"--min-worker-port={p.worker_min}", f"--max-worker-port={p.worker_max}"]
    if role == "head":
        argv += ["--head", f"--port={p.gcs}", "--include-dashboard=false"]
        if temp_dir:
            argv.append(f"--temp-dir={temp_dir}")
    elif role == "worker":
        if not head:
            raise ConfigError("a worker needs the head's address", key="--join")
        argv.append(f"--address={head}")
    else:
        raise ConfigError(f"role must be head or worker, got {role!r}", key="role")
    if block:
        argv.append("--block")
    return argv


def node_env(token_path: str, address: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of ``ray start`` (and of a driver: the token's path): token authentication, no usage
    statistics, the memory monitor off, and the mark of this node's processes."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("RAY_AUTH")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_path, RAY_USAGE_STATS_ENABLED="0",
               RAY_memory_monitor_refresh_ms="0")
    env[MARK_ENV] = address
    return env


def guard_ruleset(iface: str, ports: RayPorts | None = None) -> str:
    """The nftables table that drops TCP to Ray's ports arriving on any interface but ``iface`` and ``lo``
    (input of ``nft -f -``; it replaces an older table of the same name)."""
    if not _IFNAME.fullmatch(iface):
        raise ConfigError(f"interface name {iface!r} is not one nft is given here", key="interface")
    p = ports or RayPorts()
    dports = ", ".join([*(str(x) for x in sorted(set(p.singles()))), f"{p.worker_min}-{p.worker_max}"])
    return (f"table inet {GUARD_TABLE}\n"
            f"delete table inet {GUARD_TABLE}\n"
            f"table inet {GUARD_TABLE} {{\n"
            f"  chain input {{\n"
            f"    type filter hook input priority filter - 1; policy accept;\n"
            f"    iifname {{ \"lo\", \"{iface}\" }} accept\n"
            f"    tcp dport {{ {dports} }} drop\n"
            f"  }}\n"
            f"}}\n")


def interface_of(address: str, prefix: Sequence[str] = ()) -> str:
    """The interface that holds ``address`` (``ip -j -4 addr``; ``prefix``: e.g. an ``nsenter`` into a fake
    host).

    Raises
    ------
    ConfigError
        No interface has it (names the address).
    """
    out = subprocess.run([*prefix, "ip", "-j", "-4", "addr", "show"], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise ApplyError(f"ip addr failed: {out.stderr.strip()[:200]}", operation="cluster interface")
    for link in json.loads(out.stdout or "[]"):
        for a in link.get("addr_info", []):
            if a.get("local") == address:
                return str(link["ifname"])
    raise ConfigError(f"no interface of this host has the address {address}", key="--address")


def _run(argv: list[str], what: str, stdin: str | None = None, timeout_s: float = 30.0) -> None:
    out = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout_s, check=False)
    if out.returncode != 0:
        raise ApplyError(f"{what} failed ({out.returncode}): {out.stderr.strip()[:300]}", operation="cluster node")


def guard_on(iface: str, ports: RayPorts | None = None, prefix: Sequence[str] = ()) -> None:
    """Add (or replace) the guard table in this network namespace."""
    if shutil.which("nft") is None:
        raise ApplyError("nft is not installed (apt install nftables; ./install.sh installs it): Ray's ports would "
                         "be reachable on every interface", operation="cluster node")
    _run([*prefix, "nft", "-f", "-"], "nft (the Ray guard)", stdin=guard_ruleset(iface, ports))


def guard_off(prefix: Sequence[str] = ()) -> bool:
    """Remove the guard table if there is one; whether there was."""
    if shutil.which("nft") is None:
        return False  # nothing could have made it
    listed = subprocess.run([*prefix, "nft", "list", "table", "inet", GUARD_TABLE], capture_output=True, text=True,
                            check=False)
    if listed.returncode != 0:
        return False
    _run([*prefix, "nft", "delete", "table", "inet", GUARD_TABLE], "nft delete table")
    return True


def check_token(path: str) -> None:
    """The token file: a regular file owned by root, readable by no one else, not empty.

    Raises
    ------
    ConfigError
        Names the file and what is wrong with it.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(f"cannot read the cluster's token: {e.strerror}", file=path) from None
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
        raise ConfigError("the cluster's token must be a non-empty regular file", file=path)
    if st.st_uid != 0 or st.st_mode & 0o077:
        raise ConfigError(f"the cluster's token must be owned by root and readable by root only (chmod 600), "
                          f"it is mode {stat.S_IMODE(st.st_mode):o} of uid {st.st_uid}", file=path)


def marked_pids(address: str | None = None) -> list[int]:
    """Pids of the processes of this host's node (:data:`MARK_ENV` in their environment; with ``address``,
    only the node started with that address)."""
    want = f"{MARK_ENV}=".encode() + (address.encode() if address else b"")
    me = os.getpid()
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if any(e == want or (address is None and e.startswith(want)) for e in env):
            out.append(int(entry.name))
    return sorted(out)


def stop_node(address: str | None = None, timeout_s: float = 15.0, prefix: Sequence[str] = ()) -> tuple[int, bool]:
    """End this host's node (SIGTERM, then SIGKILL after ``timeout_s``) and remove the guard; (processes ended,
    whether a guard table was removed)."""
    pids = marked_pids(address)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
        time.sleep(0.1)
    from ..clean import kill_and_wait

    left = kill_and_wait({p for p in pids if os.path.exists(f"/proc/{p}")})
    if left:
        log.warning("processes of the Ray node still alive after SIGKILL: %s", left)
    return len(pids), guard_off(prefix)


def start_node(role: str, address: str, host: int, token_path: str, head: str | None = None, block: bool = False,
               ports: RayPorts | None = None, ray_bin: str | None = None) -> int:
    """``satnetem cluster start``: check the token and the address, put the guard up, start the node; remove
    the guard again if Ray does not start. With ``block``, stay until the node ends (SIGTERM ends it), then
    remove the guard. Returns ``ray start``'s exit status."""
    check_token(token_path)
    iface = interface_of(address)
    ray = ray_bin or str(Path(sys.executable).with_name("ray"))
    argv = node_argv(ray, role, address, host, head, ports, block)
    guard_on(iface, ports)
    print(f"satnetem cluster: Ray's ports reachable on {iface} ({address}) and lo only (nft table inet "
          f"{GUARD_TABLE})", flush=True)
    env = node_env(token_path, address)
    if not block:
        out = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            stop_node(address)
            last = " | ".join(out.stdout.strip().splitlines()[-3:] + out.stderr.strip().splitlines()[-2:])
            raise ApplyError(f"ray start failed ({out.returncode}): {last}", operation="cluster start")
        print(f"satnetem cluster: host {host} ({role}, {address}) runs its Ray node", flush=True)
        return 0
    proc = subprocess.Popen(argv, env=env)

    def forward(signum: int, frame: object) -> None:
        proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        rc = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        stop_node(address)
    return rc
