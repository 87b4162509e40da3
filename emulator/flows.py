"""Starting the scenario's traffic inside the live network, and stopping it.

Each ``[[traffic]]`` entry becomes one :class:`Flow`: its programs run in the source (and destination)
nodes' namespaces, started with argument lists, and write their records into ``flows/<label>/`` of the
results folder as they go. ``flows.json`` (the manifest) says which file holds what, so
:mod:`emulator.report` can rebuild every figure from the folder alone, even after a crash.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from topologies.scenario import TrafficSpec

log = logging.getLogger(__name__)

UDP_PORT_BASE = 20000
#: on a clustered run, how long before a flow's instant the host of its destination starts the flow's receiver,
#: so that its sender (which waits for the receiver to be ready: emulator.cluster.agent) usually starts on time
RECEIVER_LEAD_S = 1.0
#: how long a sender waits at most for its receiver to bind its port (beside two CPU hogs on the 2-core
#: development VM, a probe's receiver on a fake host of a cluster, started up to 1 s ahead, bound 0.8 s after
#: its sender had begun)
RECEIVER_READY_S = 10.0
IPERF_PORT_BASE = 5201
SERVICE_PORT = 8080
#: flow kinds with a receiving program in the destination node besides the sender in the source node
TWO_SIDED_KINDS = ("udp-probe", "iperf3-tcp", "iperf3-udp")
#: traffic matrices: UDP on this port + the entry's index, TCP bulk flows from the second base
MATRIX_PORT_BASE = 19000
MATRIX_TCP_PORT_BASE = 6300
#: ring all-reduces: every rank listens on this port + the entry's index
ALLREDUCE_PORT_BASE = 23000


def safe_label(label: str) -> str:
    return label.replace(":", "_")


@dataclass
class FlowRecord:
    """What the manifest keeps of a flow (JSON-able)."""

    label: str
    kind: str
    src: str
    dst: str
    start_unix_s: float
    duration_s: float
    rate_pps: float
    files: dict[str, str] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)  # request flows: compute node -> address
    policy: str = "fixed"


@dataclass
class Flow:
    record: FlowRecord
    procs: list[subprocess.Popen] = field(default_factory=list)
    handles: list[Any] = field(default_factory=list)
    #: in the manifest: False for the receiving side of a flow whose sender runs on another host (the sender's
    #: host lists it)
    listed: bool = True

    def stop(self, grace_s: float = 3.0) -> None:
        """SIGINT each program (they finish their files), then wait; kill what does not stop."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(2)
        deadline = time.monotonic() + grace_s
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for h in self.handles:
            h.close()

    def wait(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self.stop(grace_s=2.0)


def receiver_ready(emu: Any, i: int, spec: TrafficSpec, proc: subprocess.Popen | None = None,
                   timeout_s: float = RECEIVER_READY_S) -> bool:
    """Wait until flow ``i``'s receiving program (a UDP probe's receiver, an iperf3 server:
    :data:`TWO_SIDED_KINDS`) has bound its port in its node, as ``ss`` in the node's namespace lists the
    sockets; True once it has, False after ``timeout_s`` or when ``proc`` (the program) has ended (its log
    says why), and the sender then starts anyway: what the receiver misses counts as lost."""
    port, kind = (UDP_PORT_BASE + i, "-Hlnu") if spec.kind == "udp-probe" else (IPERF_PORT_BASE + i, "-Hlnt")
    argv = ["nsenter", f"--net={emu.node(spec.dst).ns_path}", "--", "ss", kind, "sport", "=", f":{port}"]
    deadline = time.monotonic() + timeout_s
    while True:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout
        if out.strip():
            return True
        why = (f"exit status {proc.returncode}" if proc is not None and proc.poll() is not None
               else f"after {timeout_s:g} s" if time.monotonic() > deadline else "")
        if why:
            log.warning("flow %s: its receiver is not ready (%s); the sender starts anyway", spec.label, why)
            return False
        time.sleep(0.02)


class FlowStarter:
    """Starts flows in an :class:`~emulator.network.Emulation`; writes the manifest as it goes."""

    def __init__(self, emu: Any, out: Path, speed: float) -> None:
        self.emu = emu
        self.out = out
        self.speed = speed
        #: where relative paths of the scenario (a matrix_csv) resolve
        self.base_dir: Path | None = None
        #: a matrix flow's plan by the flow's index, made elsewhere (a cluster's head, which has the scenario's
        #: files); a flow not in it is planned here
        self.matrix_plans: dict[int, Any] = {}
        #: an all-reduce's start margin by the flow's index where its ranks are on several hosts (their barrier
        #: files are relayed between the hosts, :meth:`emulator.cluster.agent.HostAgent.start_flows`)
        self.barrier_margins_s: dict[int, float] = {}
        self.flows: list[Flow] = []
        # flows start from timer threads (a start_s, a cluster host's flows at one instant): one manifest writer
        self._manifest_lock = threading.Lock()
        #: the compute nodes' cgroups (emulator.kernel.cgroups.RunGroups) while their services run: the
        #: programs that do a compute node's work (the all-reduce's ranks) join its group and its capacity
        self.groups: Any = None
        self.services: list[subprocess.Popen] = []
        self._service_handles: list[Any] = []
        (out / "flows").mkdir(parents=True, exist_ok=True)

    def _py(self, node: str, module: str, args: list[str], log_file: Path) -> tuple[subprocess.Popen, Any]:
        f = open(log_file, "w")
        argv = [sys.executable, "-m", f"emulator.traffic.{module}", *args]
        return self.emu.node(node).popen(argv, stdout=f, stderr=subprocess.STDOUT), f

    def _join_group(self, node: str, proc: subprocess.Popen) -> bool:
        """Move ``proc`` into compute node ``node``'s cgroups (False: the node has none, as when no compute
        services run). It is moved as soon as it has started: its fork and exec ran outside, its program
        (the interpreter loading, then the work) inside; threads it starts later are born there."""
        if self.groups is None or node not in self.groups.nodes:
            return False
        from topologies.errors import ApplyError

        for f in self.groups.attach_files(node):
            try:
                with open(f, "w") as fh:
                    fh.write(str(proc.pid))
            except ProcessLookupError:
                return False  # it has ended already: its log says why
            except OSError as e:
                raise ApplyError(f"cannot put process {proc.pid} into {f}: {e.strerror}",
                                 node=node, operation="cgroups: join") from None
        return True

    def start_services(self, compute_nodes: list[str], work_ms: float) -> None:
        """The orbital compute service on every compute node (requests need them)."""
        d = self.out / "flows" / "services"
        d.mkdir(exist_ok=True)
        for name in compute_nodes:
            # the node's own address, not 0.0.0.0: a service answers where the node is reached, and on
            # nothing else the namespace may have (issue 15: services bind only to their node's addresses)
            p, f = self._py(name, "service", ["serve", "--bind", self.emu.address_of(name),
                                              "--port", str(SERVICE_PORT), "--work-ms", f"{work_ms:g}", "--name", name,
                                              "--out", str(d / f"{name}.served.csv")], d / f"{name}.log")
            self.services.append(p)
            self._service_handles.append(f)

    def start(self, i: int, spec: TrafficSpec, duration_s: float, schedule: list[dict] | None = None,
              side: str = "both", at_unix_s: float | None = None) -> Flow:
        """Start flow ``i`` now for ``duration_s`` wall-clock seconds.

        ``side``: ``both`` (one host: the sender starts once its receiver is ready, :func:`receiver_ready`), or on
        a host of a clustered run, for the kinds with a receiving program (:data:`TWO_SIDED_KINDS`) whose ends
        are on two hosts, ``recv`` (only the receiver, started now, which the caller does :data:`RECEIVER_LEAD_S`
        before the flow's instant; the flow is not listed here) or ``send`` (only the sender, started now: the
        caller waits until the other host says its receiver is ready).

        A traffic matrix starts the programs of the endpoints built here (``emu.local``: all of them on one
        host; on a host of a clustered run its own, and the flow is listed by the host of the first endpoint),
        all sending from ``at_unix_s`` (default: now) + 2 s, an instant every host computes alike."""
        if side not in ("both", "send", "recv") or (side != "both" and spec.kind not in TWO_SIDED_KINDS):
            raise ValueError(f"flow kind {spec.kind!r} cannot start side {side!r}")
        label = spec.label
        d = self.out / "flows" / safe_label(label)
        d.mkdir(parents=True, exist_ok=True)
        rec = FlowRecord(label=label, kind=spec.kind, src=spec.src, dst=spec.dst, start_unix_s=time.time(),
                         duration_s=duration_s, rate_pps=spec.rate_pps, policy=spec.policy)
        flow = Flow(rec, listed=side != "recv")
        recv, send = side != "send", side != "recv"
        dur = f"{duration_s:.3f}"
        if spec.kind == "ping":
            out = d / "ping.txt"
            f = open(out, "w")
            # stdbuf: ping's output is block-buffered into a file; line buffering keeps it current.
            # -c, not -w: a deadline would end ping before the last request's reply could arrive (and
            # count it lost); with -c it waits for that reply (up to -W) after the last request.
            argv = ["stdbuf", "-oL", "ping", "-D", "-n", "-i", f"{1 / spec.rate_pps:.3f}",
                    "-c", str(max(1, round(duration_s * spec.rate_pps))), "-W", "1",
                    "-s", str(max(16, spec.size_bytes - 8)), self.emu.address_of(spec.dst)]
            flow.procs.append(self.emu.node(spec.src).popen(argv, stdout=f, stderr=subprocess.STDOUT))
            flow.handles.append(f)
            rec.files = {"ping": "ping.txt"}
        elif spec.kind == "udp-probe":
            port = str(UDP_PORT_BASE + i)
            addr = self.emu.address_of(spec.dst)
            if recv:
                p, f = self._py(spec.dst, "udpprobe", ["recv", "--bind", addr, "--port", port, "--duration",
                                                       f"{duration_s + 3:.3f}", "--flow", str(i),
                                                       "--out", str(d / "recv.csv")], d / "recv.log")
                flow.procs.append(p)
                flow.handles.append(f)
            if send and recv:  # the receiver binds first (on another host: the agents wait for it)
                receiver_ready(self.emu, i, spec, p)
            if send:
                p, f = self._py(spec.src, "udpprobe", ["send", "--dst", addr, "--port", port, "--rate-pps",
                                                       f"{spec.rate_pps:g}", "--size", str(spec.size_bytes),
                                                       "--duration", dur, "--flow", str(i),
                                                       "--out", str(d / "sent.csv")], d / "send.log")
                flow.procs.insert(0, p)
                flow.handles.append(f)
            rec.files = {"sent": "sent.csv", "recv": "recv.csv"}
        elif spec.kind in ("iperf3-tcp", "iperf3-udp"):
            from .traffic.iperf import IperfFlow, client_argv, server_argv

            fl = IperfFlow(addr=self.emu.address_of(spec.dst), port=IPERF_PORT_BASE + i,
                           duration_s=max(1.0, duration_s), udp=spec.kind == "iperf3-udp",
                           rate_mbps=spec.rate_mbps if spec.kind == "iperf3-udp" else None)
            quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            if recv:
                flow.procs.append(self.emu.node(spec.dst).popen(server_argv(fl, str(d / "server.log")), **quiet))
            if send:
                if recv:  # the server listens first (on another host: the agents wait for it)
                    receiver_ready(self.emu, i, spec, flow.procs[-1])
                flow.procs.insert(0, self.emu.node(spec.src).popen(client_argv(fl, str(d / "client.json")), **quiet))
            rec.files = {"client": "client.json", "server": "server.log"}
        elif spec.kind == "path":
            p, f = self._py(spec.src, "pathprobe", ["--dst", self.emu.address_of(spec.dst), "--max-ttl", "64",
                                                    "--interval-s", f"{max(0.2, 1 / spec.rate_pps):.3f}",
                                                    "--duration", dur, "--out", str(d / "paths.csv")],
                            d / "path.log")
            flow.procs.append(p)
            flow.handles.append(f)
            rec.files = {"paths": "paths.csv"}
        elif spec.kind == "request":
            computes = [self.emu.timeline.nodes[k].name for k in self.emu.timeline.nodes_of("compute")]
            names = [spec.dst] if spec.policy == "fixed" else computes
            rec.targets = {n: self.emu.address_of(n) for n in names}
            args = ["request", "--targets", ",".join(f"{n}={a}:{SERVICE_PORT}" for n, a in rec.targets.items()),
                    "--policy", spec.policy, "--rate-pps", f"{spec.rate_pps:g}", "--duration", dur,
                    "--out", str(d / "requests.csv")]
            if spec.policy in ("nearest", "best"):  # best: emulator.migration moves the target as it goes
                (d / "schedule.json").write_text(json.dumps(schedule or []))
                args += ["--schedule", str(d / "schedule.json")]
                rec.files["schedule"] = "schedule.json"
            p, f = self._py(spec.src, "service", args, d / "request.log")
            flow.procs.append(p)
            flow.handles.append(f)
            rec.files["requests"] = "requests.csv"
        elif spec.kind == "matrix":
            self._start_matrix(i, spec, duration_s, d, flow, time.time() if at_unix_s is None else at_unix_s)
        elif spec.kind == "allreduce":
            self._start_allreduce(i, spec, duration_s, d, flow)
        else:  # the scenario loader only admits the kinds above
            raise ValueError(f"unknown traffic kind {spec.kind!r}")
        with self._manifest_lock:
            self.flows.append(flow)
            self.write_manifest()
        return flow

    def _start_matrix(self, i: int, spec: TrafficSpec, duration_s: float, d: Path, flow: Flow, at: float) -> None:
        """One process per endpoint (sender of its row and sink of its column), and iperf3 TCP bulk flows on
        the ``tcp_flows`` largest pairs; ``matrix.json`` keeps the rates, the city matches and the files. Only
        the endpoints built here (:meth:`start`)."""
        from topologies.traffic_matrix import plan_matrix

        from .traffic.iperf import IperfFlow, client_argv, server_argv

        plan = self.matrix_plans.get(i) or plan_matrix(spec, self.emu.timeline, self.base_dir)
        index, local = self.emu.timeline.node_index, self.emu.local
        here = {n for n in plan.endpoints if local[index(n)]}
        flow.listed = plan.endpoints[0] in here
        addr = {n: self.emu.address_of(n) for n in plan.endpoints}
        port = str(MATRIX_PORT_BASE + i)
        # every sink binds before anyone sends: processes start within this margin under load
        start_at = at + 2.0
        send_s = max(0.5, duration_s - 2.0)
        files = {}
        for k, name in enumerate(plan.endpoints):
            files[name] = f"{name}.csv"
            if name not in here:
                continue
            peers = [{"name": m, "addr": addr[m], "rate_mbps": float(plan.rates_mbps[k, j])}
                     for j, m in enumerate(plan.endpoints) if plan.rates_mbps[k, j] > 0]
            (d / f"{name}.peers.json").write_text(json.dumps(peers))
            p, f = self._py(name, "matrix", ["--bind", addr[name], "--port", port, "--peers",
                                             str(d / f"{name}.peers.json"), "--start-at", f"{start_at:.3f}",
                                             "--duration", f"{send_s:.3f}",
                                             "--payload", str(spec.payload_bytes),
                                             "--out", str(d / f"{name}.csv")], d / f"{name}.log")
            flow.procs.append(p)
            flow.handles.append(f)
        tcp = []
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        later = []  # clients whose server is on another host: they start when the matrix sends
        for k, (src, dst, _) in enumerate(plan.top_pairs(spec.tcp_flows)):
            # a client that starts when the matrix sends (below) sends as long as the matrix does
            fl = IperfFlow(addr=addr[dst], port=MATRIX_TCP_PORT_BASE + 16 * i + k,
                           duration_s=max(1.0, duration_s if dst in here else send_s), udp=False, rate_mbps=None)
            if dst in here:
                flow.procs.append(self.emu.node(dst).popen(server_argv(fl, str(d / f"tcp{k}.server.log")), **quiet))
            if src in here and dst in here:  # the server first
                time.sleep(0.3)
                flow.procs.insert(0, self.emu.node(src).popen(client_argv(fl, str(d / f"tcp{k}.client.json")),
                                                              **quiet))
            elif src in here:  # the server starts at the same instant on its host, which this one cannot see
                later.append((src, client_argv(fl, str(d / f"tcp{k}.client.json"))))
            tcp.append({"src": src, "dst": dst, "client": f"tcp{k}.client.json"})
        if later:
            time.sleep(max(0.0, start_at - time.time()))
            for src, argv in later:
                flow.procs.insert(0, self.emu.node(src).popen(argv, **quiet))
        flow.record.files = {"matrix": "matrix.json", **files}
        if not flow.listed:
            return
        (d / "matrix.json").write_text(json.dumps({
            "source": plan.source, "endpoints": list(plan.endpoints), "rates_mbps": plan.rates_mbps.tolist(),
            "payload_bytes": spec.payload_bytes, "start_unix_s": start_at, "duration_s": send_s,
            "matches": [asdict(m) for m in plan.matches], "files": files, "tcp": tcp}, indent=1))

    def _start_allreduce(self, i: int, spec: TrafficSpec, duration_s: float, d: Path, flow: Flow) -> None:
        """One rank per node of the ring (emulator.traffic.allreduce); ``allreduce.json`` keeps the ring, the
        size and the files."""
        nodes = list(spec.nodes)
        addr = [self.emu.address_of(n) for n in nodes]
        k = len(nodes)
        size_b = int(round(float(spec.size_mb or 0) * 1e6)) // 4 * 4
        bar = d / "barrier"
        bar.mkdir(exist_ok=True)
        index, local = self.emu.timeline.node_index, self.emu.local
        flow.listed = bool(local[index(nodes[0])])
        margin = self.barrier_margins_s.get(i)
        files = {}
        for r, name in enumerate(nodes):
            files[name] = f"{name}.csv"
            if not local[index(name)]:  # another host's rank
                continue
            p, f = self._py(name, "allreduce", ["--rank", str(r), "--ranks", str(k), "--bind", addr[r],
                                                "--port", str(ALLREDUCE_PORT_BASE + i), "--succ", addr[(r + 1) % k],
                                                "--pred", addr[(r - 1) % k], "--size-bytes", str(size_b),
                                                "--rounds", str(spec.rounds), "--duration", f"{duration_s:.3f}",
                                                "--barrier", str(bar), "--out", str(d / f"{name}.csv"),
                                                *(["--start-margin", f"{margin:g}"] if margin is not None else [])],
                            d / f"{name}.log")
            flow.procs.append(p)
            flow.handles.append(f)
            if not self._join_group(name, p):
                log.info("all-reduce rank on %s runs outside any compute cgroup", name)
        flow.record.files = {"allreduce": "allreduce.json", **files}
        if not flow.listed:
            return
        (d / "allreduce.json").write_text(json.dumps({"nodes": nodes, "addresses": addr, "size_bytes": size_b,
                                                      "rounds": spec.rounds, "files": files}, indent=1))

    def write_manifest(self) -> None:
        tmp = self.out / "flows.json.tmp"
        tmp.write_text(json.dumps([asdict(f.record) for f in self.flows if f.listed], indent=2))
        tmp.replace(self.out / "flows.json")

    def stop_all(self) -> None:
        for f in self.flows:
            f.stop()
        for p in self.services:
            if p.poll() is None:
                p.send_signal(2)
        for p in self.services:
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for h in self._service_handles:
            h.close()
