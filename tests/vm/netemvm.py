"""Run one command inside a qemu VM that boots the host's stock Debian kernel, which has sch_netem.

The machine that develops satnetem may run a kernel without ``sch_netem``; users' stock kernels have
it. This harness boots the newest installed ``/boot/vmlinuz-*`` whose modules include
``sch_netem.ko`` under ``qemu-system-x86_64 -accel tcg``, with a small busybox initramfs that mounts
the host's ``/`` read-only over 9p under a tmpfs overlay and chroots into it, so the guest runs the
host's own Python, virtualenv, Mininet and checkout. The command runs there as an argument list and
its exit code comes back to the host as a marker line on the serial console::

    python -m tests.vm.netemvm [--memory-mb N] [--cpus N] [--timeout-s S] [--share DIR] \\
        -- .venv/bin/python -m pytest tests/integration -q

Anything the guest writes lands in the tmpfs overlay and is lost at power-off, except under the host
directories given with ``--share`` (mounted read-write at the same path).
"""

from __future__ import annotations

import argparse
import codecs
import ctypes
import ctypes.util
import dataclasses
import gzip
import hashlib
import json
import logging
import lzma
import os
import re
import secrets
import selectors
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from topologies.errors import ConfigError, SatnetemError

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent.parent
INIT_SCRIPT = HERE / "init.sh"
GUEST_EXEC = HERE / "guest_exec.py"

#: Modules the VM itself needs to reach the host's root: virtio transport, 9p, overlayfs.
VM_MODULES: tuple[str, ...] = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
#: Modules the emulator's shaping backends need; loaded up front so a missing one fails at boot.
EMULATOR_MODULES: tuple[str, ...] = (
    "veth", "sch_netem", "sch_htb", "sch_tbf", "sch_ingress", "ifb", "act_mirred", "cls_u32",
    "cls_matchall", "cls_fw",
)
#: Host environment variables the command sees in the guest (when set on the host).
ESSENTIAL_ENV: tuple[str, ...] = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "VIRTUAL_ENV", "CI",
    "PYTHONPATH", "PYTEST_ADDOPTS",
)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MARKER = "@@satnetem-vm@@"
INSTALL_KERNEL_HINT = "apt-get install linux-image-amd64"

EXIT_TIMEOUT = 124  # as coreutils timeout(1)
EXIT_VM_FAILED = 125  # as docker run: the harness, not the command, failed


class VmError(SatnetemError):
    """The VM could not run the command (as opposed to the command failing inside it)."""


class VmUnavailableError(VmError):
    """Something the VM needs on the host is missing: qemu, a kernel with sch_netem, busybox-static."""


class VmTimeoutError(VmError):
    """The VM did not report the command's exit code in time; qemu was killed."""


class VmSetupError(VmError):
    """The guest failed before or around the command (mount, module load) or qemu died."""


# --------------------------------------------------------------------------------------------------
# Kernel and modules


@dataclasses.dataclass(frozen=True)
class KernelImage:
    """An installed kernel: its version string, image and module directory."""

    version: str
    vmlinuz: Path
    modules_dir: Path


def version_key(version: str) -> tuple:
    """Sort key for kernel version strings: numeric runs compare as numbers (6.1.0-56 > 6.1.0-9)."""
    parts = re.findall(r"\d+|[^\d]+", version)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def module_name(path: str) -> str:
    """Kernel module name of a module file path: ``kernel/net/9p/9pnet_virtio.ko.xz`` -> ``9pnet_virtio``.

    Like modprobe, dashes and underscores are the same.
    """
    base = path.rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.(xz|gz|zst))?$", "", base)
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """Parse a ``modules.dep`` file.

    Parameters
    ----------
    text : str
        Contents of ``/lib/modules/<version>/modules.dep``: lines ``path: dep-path dep-path ...``.

    Returns
    -------
    dict
        Module path (relative to the module directory) -> paths it depends on, in file order.

    Raises
    ------
    ConfigError
        A non-empty line without the ``:`` separator.
    """
    deps: dict[str, list[str]] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        path, sep, rest = line.partition(":")
        if not sep or not path.strip():
            raise ConfigError(f"expected 'module-path: dependencies', got {line!r}",
                              file="modules.dep", line=lineno)
        deps[path.strip()] = rest.split()
    return deps


def parse_modules_builtin(text: str) -> set[str]:
    """Names of the modules compiled into the kernel, from ``modules.builtin``."""
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


def module_load_order(deps: Mapping[str, Sequence[str]], wanted: Iterable[str],
                      builtin: Iterable[str] = ()) -> list[str]:
    """Module files to insert, dependencies first, each once.

    Parameters
    ----------
    deps : mapping
        From :func:`parse_modules_dep`.
    wanted : iterable of str
        Module names (``sch_netem``, ``9p``, ...). Names compiled into the kernel are skipped.
    builtin : iterable of str
        Names from :func:`parse_modules_builtin`.

    Returns
    -------
    list of str
        Module paths in an order in which ``insmod`` succeeds.

    Raises
    ------
    ConfigError
        A wanted module is neither a module nor built in, or the dependencies form a cycle.
    """
    by_name = {module_name(p): p for p in deps}
    builtin_names = set(builtin)
    order: list[str] = []
    done: set[str] = set()

    def visit(path: str, chain: tuple[str, ...]) -> None:
        if path in done:
            return
        if path in chain:
            raise ConfigError("module dependency cycle: " + " -> ".join(module_name(p) for p in
                                                                       (*chain, path)))
        for dep in deps.get(path, ()):
            visit(dep, (*chain, path))
        done.add(path)
        order.append(path)

    for name in wanted:
        key = name.replace("-", "_")
        if key in builtin_names and key not in by_name:
            continue
        if key not in by_name:
            raise ConfigError(f"kernel module {name!r} is neither in modules.dep nor built in",
                              key="module")
        visit(by_name[key], ())
    return order


def find_kernel(boot_dir: Path = Path("/boot"), modules_root: Path = Path("/lib/modules"),
                version: str | None = None) -> KernelImage:
    """The newest installed kernel whose modules include ``sch_netem``.

    Parameters
    ----------
    boot_dir, modules_root : Path
        Where ``vmlinuz-<version>`` and ``<version>/modules.dep`` live.
    version : str, optional
        Use exactly this version instead of the newest.

    Raises
    ------
    VmUnavailableError
        No such kernel; the message says how to install one.
    """
    candidates = []
    for image in boot_dir.glob("vmlinuz-*"):
        v = image.name[len("vmlinuz-"):]
        if version is not None and v != version:
            continue
        dep_file = modules_root / v / "modules.dep"
        try:
            dep_text = dep_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if re.search(r"(^|/)sch_netem\.ko(\.(xz|gz|zst))?:", dep_text, re.MULTILINE):
            candidates.append(KernelImage(v, image, modules_root / v))
    if not candidates:
        which = f"version {version} " if version else ""
        raise VmUnavailableError(
            f"no installed kernel {which}in {boot_dir} has sch_netem.ko among its modules in "
            f"{modules_root}; install Debian's stock kernel: {INSTALL_KERNEL_HINT}")
    return max(candidates, key=lambda k: version_key(k.version))


def read_module(path: Path) -> bytes:
    """Bytes of a module file, decompressed if it is ``.ko.xz`` or ``.ko.gz`` (busybox insmod needs raw)."""
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if path.name.endswith(".ko.zst"):
        raise VmUnavailableError(f"{path}: zstd-compressed modules are not supported by this harness")
    return path.read_bytes()


# --------------------------------------------------------------------------------------------------
# Initramfs


def elf_is_static(path: Path) -> bool:
    """True if ``path`` is an ELF executable without a program interpreter (statically linked)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF":
            raise ConfigError(f"{path} is not an ELF file")
        if head[4] != 2:
            raise ConfigError(f"{path}: only 64-bit ELF is supported")
        endian = "<" if head[5] == 1 else ">"
        (phoff,) = struct.unpack_from(endian + "Q", head, 0x20)
        phentsize, phnum = struct.unpack_from(endian + "HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    pt_interp = 3
    return all(struct.unpack_from(endian + "I", table, i * phentsize)[0] != pt_interp for i in range(phnum))


@dataclasses.dataclass(frozen=True)
class CpioEntry:
    """One member of a newc cpio archive: a directory, regular file, symlink or device node."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if not self.name or self.name.startswith("/"):
            raise ConfigError(f"cpio member name must be relative and non-empty, got {self.name!r}")


def cpio_newc(entries: Iterable[CpioEntry]) -> bytes:
    """Serialise entries as a "newc" cpio archive (the format the kernel unpacks as initramfs).

    Owner is root, times are zero, so the same entries always give the same bytes.
    """
    out = bytearray()

    def member(ino: int, name: str, mode: int, data: bytes, rdev: tuple[int, int]) -> None:
        raw_name = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(raw_name), 0)
        out.extend(b"070701" + b"".join(b"%08X" % v for v in fields))
        out.extend(raw_name)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    ino = 0
    for ino, e in enumerate(entries, start=1):
        member(ino, e.name, e.mode, e.data, e.rdev)
    member(ino + 1, "TRAILER!!!", 0, b"", (0, 0))
    return bytes(out)


def _dir(name: str) -> CpioEntry:
    return CpioEntry(name, stat.S_IFDIR | 0o755)


def _file(name: str, data: bytes, perm: int = 0o644) -> CpioEntry:
    return CpioEntry(name, stat.S_IFREG | perm, data)


MODPROBE_HELPER = b"""#!/bin/busybox sh
# Kernel module autoload helper: the host's kmod and /lib/modules, reached through the new root.
exec /bin/busybox chroot /newroot /sbin/modprobe "$@"
"""


def find_busybox() -> Path:
    """The statically linked busybox to put in the initramfs."""
    for candidate in (shutil.which("busybox"), "/bin/busybox", "/usr/bin/busybox"):
        if candidate and Path(candidate).is_file() and elf_is_static(Path(candidate)):
            return Path(candidate)
    raise VmUnavailableError("no statically linked busybox found; apt-get install busybox-static")


def base_initramfs_entries(kernel: KernelImage, modules: Sequence[str], busybox: Path) -> list[CpioEntry]:
    """Members of the per-kernel part of the initramfs: /init, busybox, /dev/console, the modules.

    ``modules`` are paths relative to ``kernel.modules_dir`` in load order.
    """
    entries = [_dir("bin"), _dir("dev"), _dir("satnetem"), _dir("satnetem/modules"),
               CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
               _file("bin/busybox", busybox.read_bytes(), 0o755),
               _file("init", INIT_SCRIPT.read_bytes(), 0o755),
               _file("satnetem/guest_exec.py", GUEST_EXEC.read_bytes()),
               _file("satnetem/modprobe", MODPROBE_HELPER, 0o755)]
    names = []
    for rel in modules:
        name = module_name(rel) + ".ko"
        names.append(name)
        entries.append(_file(f"satnetem/modules/{name}", read_module(kernel.modules_dir / rel)))
    entries.append(_file("satnetem/modules.order", "".join(n + "\n" for n in names).encode()))
    return entries


def default_cache_dir() -> Path:
    """``$SATNETEM_VM_CACHE`` or the checkout's git-ignored ``.vmcache/``."""
    return Path(os.environ.get("SATNETEM_VM_CACHE") or CHECKOUT / ".vmcache")


def build_base_initramfs(kernel: KernelImage, extra_modules: Sequence[str] = (),
                         cache_dir: Path | None = None) -> Path:
    """Build (or reuse from the cache) the per-kernel initramfs and return its path.

    The cache key covers the kernel image, every module file, busybox, ``init.sh``, the guest
    launcher and this module, so any change to them rebuilds it.
    """
    cache_dir = cache_dir or default_cache_dir()
    deps = parse_modules_dep((kernel.modules_dir / "modules.dep").read_text(encoding="utf-8"))
    builtin_file = kernel.modules_dir / "modules.builtin"
    builtin = parse_modules_builtin(builtin_file.read_text(encoding="utf-8")) if builtin_file.exists() else set()
    order = module_load_order(deps, (*VM_MODULES, *EMULATOR_MODULES, *extra_modules), builtin)
    busybox = find_busybox()

    h = hashlib.sha256()
    for p in (kernel.vmlinuz, busybox, *(kernel.modules_dir / m for m in order)):
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    for p in (INIT_SCRIPT, GUEST_EXEC, Path(__file__).resolve()):
        h.update(p.read_bytes())
    h.update("\0".join(order).encode())
    target = cache_dir / f"initramfs-{kernel.version}-{h.hexdigest()[:16]}.cpio"
    if target.exists():
        log.debug("reusing cached initramfs %s", target)
        return target

    cache_dir.mkdir(parents=True, exist_ok=True)
    data = cpio_newc(base_initramfs_entries(kernel, order, busybox))
    # Write then rename, so a concurrent run never boots a half-written file.
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".initramfs-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, target)
    for stale in cache_dir.glob(f"initramfs-{kernel.version}-*.cpio"):
        if stale != target:
            stale.unlink(missing_ok=True)
    log.info("built initramfs %s (%d modules, %.1f MB)", target, len(order), len(data) / 1e6)
    return target


# --------------------------------------------------------------------------------------------------
# The job


@dataclasses.dataclass(frozen=True)
class VmConfig:
    """How to run the VM.

    Attributes
    ----------
    memory_mb : int
        Guest RAM in MiB (the overlay's writes live in it too).
    cpus : int
        Guest vCPUs.
    timeout_s : float
        Wall-clock limit for boot plus command; qemu is killed after it.
    shares : tuple of Path
        Host directories mounted read-write at the same path in the guest.
    env : tuple of (str, str)
        Extra environment for the command, on top of the host's essentials.
    extra_modules : tuple of str
        Kernel modules to load at boot beyond the default set.
    kernel_version : str or None
        A specific installed kernel; the newest one with sch_netem if None.
    cache_dir : Path or None
        Where built initramfs images are kept; :func:`default_cache_dir` if None.
    boot_log : bool
        Show the kernel's boot messages instead of booting ``quiet``.
    qemu : str
        The qemu binary.
    """

    memory_mb: int = 2048
    cpus: int = 2
    timeout_s: float = 300.0
    shares: tuple[Path, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    extra_modules: tuple[str, ...] = ()
    kernel_version: str | None = None
    cache_dir: Path | None = None
    boot_log: bool = False
    qemu: str = "qemu-system-x86_64"

    def __post_init__(self) -> None:
        if not 256 <= self.memory_mb <= 65536:
            raise ConfigError(f"memory_mb must be in [256, 65536], got {self.memory_mb}", key="memory_mb")
        if not 1 <= self.cpus <= 64:
            raise ConfigError(f"cpus must be in [1, 64], got {self.cpus}", key="cpus")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout_s must be > 0, got {self.timeout_s}", key="timeout_s")
        for share in self.shares:
            s = str(share)
            if not share.is_absolute() or "\n" in s or "\t" in s or "\0" in s:
                raise ConfigError(f"a share must be an absolute path without tabs or newlines, got {s!r}",
                                  key="shares")
            if not share.is_dir():
                raise ConfigError(f"share {s} is not an existing directory", key="shares")
            if share.resolve() == Path("/"):
                raise ConfigError("the host root cannot be shared read-write", key="shares")
        for name, value in self.env:
            if not name or "=" in name or "\0" in name or "\0" in value:
                raise ConfigError(f"bad environment entry {name!r}={value!r}", key="env")


def guest_environment(host_env: Mapping[str, str], extra: Iterable[tuple[str, str]] = (),
                      venv_prefix: str | None = None) -> dict[str, str]:
    """The environment the command sees in the guest.

    The host's essentials (:data:`ESSENTIAL_ENV`), ``TERM=dumb`` (the console is a serial line),
    ``PYTHONDONTWRITEBYTECODE=1`` (the checkout is read-only underneath), ``PYTHONUNBUFFERED=1`` (so
    output streams live), ``SATNETEM_IN_VM=1``, ``SATNETEM_KEEP_CPUS_AWAKE=0``; if the harness runs from a virtualenv
    (``venv_prefix``), that venv is activated (``VIRTUAL_ENV`` and its ``bin`` first on ``PATH``).
    ``extra`` overrides all of these.
    """
    env = {k: host_env[k] for k in ESSENTIAL_ENV if k in host_env}
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", "/root")
    if venv_prefix:
        env["VIRTUAL_ENV"] = venv_prefix
        venv_bin = os.path.join(venv_prefix, "bin")
        if env["PATH"].split(":")[0] != venv_bin:
            env["PATH"] = f"{venv_bin}:{env['PATH']}"
    # SATNETEM_KEEP_CPUS_AWAKE=0: under TCG a polling idle vCPU is a host thread spinning, which takes a core
    # from this 2-core host (emulator.kernel.cpulatency); the guest's timers are the netem kernel's anyway
    env.update(TERM="dumb", PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1", SATNETEM_IN_VM="1",
               SATNETEM_KEEP_CPUS_AWAKE="0")
    env.update(dict(extra))
    return env


def job_entries(argv: Sequence[str], env: Mapping[str, str], cwd: str, nonce: str, python: str,
                share_tags: Sequence[tuple[str, Path]]) -> list[CpioEntry]:
    """Members of the per-run part of the initramfs. The command travels as JSON data, never as shell."""
    if not argv:
        raise ConfigError("no command given", key="argv")
    job = {"argv": list(argv), "env": dict(env), "cwd": cwd}
    shares = "".join(f"{tag}\t{path}\n" for tag, path in share_tags)
    return [_file("satnetem/nonce", nonce.encode() + b"\n"),
            _file("satnetem/python", python.encode() + b"\n"),
            _file("satnetem/shares", shares.encode()),
            _file("satnetem/job.json", json.dumps(job).encode())]


def _qemu_opt(value: str) -> str:
    """Escape a value for a qemu ``-opt key=value,...`` list (a comma is written twice)."""
    return value.replace(",", ",,")


#: folders the guest replaces with an empty tmpfs
HIDDEN_IN_GUEST = (Path("/tmp"), Path("/run"))


def qemu_command(config: VmConfig, kernel: KernelImage, initrd: Path,
                 share_tags: Sequence[tuple[str, Path]]) -> list[str]:
    """The qemu argument list: TCG, serial console on stdio, the host root and shares over 9p."""
    append = "console=ttyS0 panic=-1 rdinit=/init" + ("" if config.boot_log else " quiet loglevel=3")
    # -cpu max: TCG's default model (qemu64) lacks instructions that today's numpy wheels need (SSE4.2 and
    # up: x86-64-v2), which would kill the guest's Python with "Illegal instruction"
    cmd = [config.qemu, "-accel", "tcg", "-cpu", "max", "-nodefaults", "-no-user-config", "-no-reboot",
           "-display", "none", "-monitor", "none", "-serial", "stdio",
           "-m", str(config.memory_mb), "-smp", str(config.cpus),
           "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd), "-append", append,
           "-virtfs", ("local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,"
                       "multidevs=remap")]
    for tag, path in share_tags:
        cmd += ["-virtfs", (f"local,path={_qemu_opt(str(path))},mount_tag={tag},"
                            "security_model=passthrough,multidevs=remap")]
    return cmd


# --------------------------------------------------------------------------------------------------
# Running


@dataclasses.dataclass(frozen=True)
class Marker:
    """A status line the guest's /init printed: ``ready``, ``setup-failed`` or ``exit`` with a code."""

    kind: str
    exit_code: int | None = None


_MARKER_RE = re.compile(re.escape(MARKER) + r" (?P<nonce>[0-9a-f]+) (?:(?P<kind>ready|setup-failed)|exit=(?P<code>\d+))\s*$")


def parse_marker(line: str, nonce: str) -> Marker | None:
    """The marker in one console line, if it carries this run's nonce.

    Kernel messages may be printed in front of it on the same line, so the marker is searched for,
    not anchored at the start. Lines with another nonce (e.g. printed by a nested run) are ignored.
    """
    m = _MARKER_RE.search(line)
    if m is None or m["nonce"] != nonce:
        return None
    if m["code"] is not None:
        return Marker("exit", int(m["code"]))
    return Marker(m["kind"])


@dataclasses.dataclass(frozen=True)
class VmResult:
    """What a VM run gave: the command's exit code, timings in seconds, the console text."""

    exit_code: int
    boot_s: float
    total_s: float
    output: str = dataclasses.field(repr=False)  # the whole console: too long for an assertion message


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _die_with_parent() -> None:
    # qemu gets SIGKILL if the harness dies without running its finaliser (e.g. killed with -9).
    pr_set_pdeathsig = 1
    _libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _stop(proc: subprocess.Popen, grace_s: float) -> None:
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_in_vm(argv: Sequence[str], config: VmConfig = VmConfig(), *, stream: TextIO | None = None,
              cwd: str | None = None) -> VmResult:
    """Boot the VM, run ``argv`` in it and return its exit code.

    Parameters
    ----------
    argv : sequence of str
        The command, as an argument list (run with the host's paths, in the chroot of the host's root).
    config : VmConfig
        Memory, CPUs, timeout, shares, environment.
    stream : text stream, optional
        Where the guest console goes live (e.g. ``sys.stdout``); nowhere if None.
    cwd : str, optional
        Working directory in the guest; the caller's current directory if None.

    Returns
    -------
    VmResult
        ``exit_code`` is the command's own (128 + N if killed by signal N).

    Raises
    ------
    VmUnavailableError
        qemu, a suitable kernel or busybox-static is missing on the host.
    VmTimeoutError
        No exit code within ``config.timeout_s`` seconds (qemu is killed).
    VmSetupError
        The guest failed to set up, or qemu ended without reporting an exit code.
    """
    if shutil.which(config.qemu) is None:
        raise VmUnavailableError(f"{config.qemu} not found; apt-get install qemu-system-x86")
    kernel = find_kernel(version=config.kernel_version)
    base = build_base_initramfs(kernel, config.extra_modules, config.cache_dir)
    nonce = secrets.token_hex(8)
    shares = [p.resolve() for p in config.shares]
    # The guest lays fresh tmpfs over /tmp and /run: a checkout or venv there (CI may clone into /tmp)
    # would vanish, so such folders are shared into the guest at the same path.
    for p in (Path(cwd or os.getcwd()).resolve(), Path(sys.prefix).resolve()):
        hidden = any(p == h or h in p.parents for h in HIDDEN_IN_GUEST)
        if hidden and not any(p == s or s in p.parents for s in shares):
            shares.append(p)
    share_tags = [(f"share{i}", p) for i, p in enumerate(shares)]
    venv = sys.prefix if sys.prefix != sys.base_prefix else None
    env = guest_environment(os.environ, config.env, venv)
    job = cpio_newc(job_entries(argv, env, cwd or os.getcwd(), nonce, sys.executable, share_tags))

    fd, initrd_name = tempfile.mkstemp(prefix="satnetem-vm-", suffix=".cpio")
    initrd = Path(initrd_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(base.read_bytes())
            f.write(job)  # the kernel unpacks concatenated archives in order
        cmd = qemu_command(config, kernel, initrd, share_tags)
        log.info("booting %s: %s", kernel.version, " ".join(cmd))
        return _drive(cmd, config, nonce, stream, list(argv), initrd)
    finally:
        initrd.unlink(missing_ok=True)


def _drive(cmd: list[str], config: VmConfig, nonce: str, stream: TextIO | None, argv: list[str],
           initrd: Path) -> VmResult:
    start = time.monotonic()
    deadline = start + config.timeout_s
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            # one prctl(2) in the child: no locks, no allocation, so safe with threads
                            preexec_fn=_die_with_parent)  # noqa: PLW1509
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    output: list[str] = []
    pending = ""
    boot_s: float | None = None
    exit_code: int | None = None
    setup_failed = False
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                now = time.monotonic()
                if exit_code is not None or setup_failed:
                    # Reported: give the guest a moment to power off, then stop reading.
                    deadline = min(deadline, now + 15.0)
                if now >= deadline:
                    if exit_code is not None or setup_failed:
                        break
                    tail = "".join(output)[-2000:]
                    raise VmTimeoutError(
                        f"the VM did not report an exit code within {config.timeout_s:g} s for {argv!r}; "
                        f"qemu killed. Last console output:\n{tail}")
                if not sel.select(min(deadline - now, 1.0)):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                # qemu loaded the initrd before the guest could print anything: drop the file now, so
                # not even a harness killed with SIGKILL leaves it behind.
                initrd.unlink(missing_ok=True)
                text = decoder.decode(chunk).replace("\r", "")
                output.append(text)
                if stream is not None:
                    stream.write(text)
                    stream.flush()
                pending += text
                *lines, pending = pending.split("\n")
                for line in lines:
                    marker = parse_marker(line, nonce)
                    if marker is None:
                        continue
                    if marker.kind == "ready":
                        boot_s = time.monotonic() - start
                        log.info("guest ready after %.1f s", boot_s)
                    elif marker.kind == "setup-failed":
                        setup_failed = True
                    else:
                        exit_code = marker.exit_code
    finally:
        if proc.poll() is None:
            proc.kill()
        _stop(proc, 5.0)
        if proc.stdout is not None:
            proc.stdout.close()
    total_s = time.monotonic() - start
    text = "".join(output)
    if setup_failed:
        raise VmSetupError(f"the guest failed to set up before running {argv!r}:\n{text[-2000:]}")
    if exit_code is None:
        raise VmSetupError(f"qemu exited (status {proc.returncode}) without reporting an exit code for "
                           f"{argv!r}. Last console output:\n{text[-2000:]}")
    log.info("command exited %d; boot %.1f s, total %.1f s", exit_code, boot_s or 0.0, total_s)
    return VmResult(exit_code, boot_s if boot_s is not None else float("nan"), total_s, text)


# --------------------------------------------------------------------------------------------------
# Command line


def _env_entry(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        if name not in os.environ:
            raise argparse.ArgumentTypeError(f"{name} is not set on the host; give NAME=VALUE")
        value = os.environ[name]
    return name, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.vm.netemvm",
        description="Run a command inside a qemu VM booting the host's stock kernel (which has sch_netem), "
                    "on the host's own root filesystem (read-only, with a throw-away overlay).",
        epilog="Exit status: the command's own; 124 on timeout; 125 if the VM could not run it.")
    p.add_argument("--memory-mb", type=int, default=2048, help="guest RAM in MiB (default 2048)")
    p.add_argument("--cpus", type=int, default=2, help="guest vCPUs (default 2)")
    p.add_argument("--timeout-s", type=float, default=300.0, help="kill qemu after this many seconds (300)")
    p.add_argument("--share", action="append", default=[], metavar="DIR",
                   help="host directory mounted read-write at the same path in the guest (repeatable)")
    p.add_argument("--env", action="append", default=[], type=_env_entry, metavar="NAME[=VALUE]",
                   help="extra environment variable for the command (repeatable)")
    p.add_argument("--module", action="append", default=[], metavar="NAME",
                   help="extra kernel module to load at boot (repeatable)")
    p.add_argument("--kernel", default=None, metavar="VERSION", help="installed kernel version to boot")
    p.add_argument("--cache-dir", default=None, type=Path, help="initramfs cache (default .vmcache/)")
    p.add_argument("--boot-log", action="store_true", help="show the kernel's boot messages")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the harness does")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- then the command and its arguments")
    return p


def main(args: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(args)
    argv = ns.argv[1:] if ns.argv[:1] == ["--"] else ns.argv
    if not argv:
        parser.error("no command given (put it after --)")
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING,
                        format="netemvm: %(message)s")
    try:
        config = VmConfig(memory_mb=ns.memory_mb, cpus=ns.cpus, timeout_s=ns.timeout_s,
                          shares=tuple(Path(s).absolute() for s in ns.share), env=tuple(ns.env),
                          extra_modules=tuple(ns.module), kernel_version=ns.kernel,
                          cache_dir=ns.cache_dir, boot_log=ns.boot_log)
        result = run_in_vm(argv, config, stream=sys.stdout)
    except ConfigError as e:
        sys.stderr.write(f"netemvm: {e}\n")
        return 2
    except VmTimeoutError as e:
        sys.stderr.write(f"\nnetemvm: timeout: {e}\n")
        return EXIT_TIMEOUT
    except VmError as e:
        sys.stderr.write(f"\nnetemvm: {type(e).__name__}: {e}\n")
        return EXIT_VM_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("\nnetemvm: interrupted; qemu stopped\n")
        return 130
    sys.stderr.write(f"netemvm: exit code {result.exit_code} (boot {result.boot_s:.1f} s, "
                     f"total {result.total_s:.1f} s)\n")
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
