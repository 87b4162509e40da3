"""Kernel modules a shaping backend needs that the kernel does not load on demand: find them, load them
with modprobe, or stop with one line that says which and why.

The case that made this necessary: the userspace backend's nft rules queue packets with the xtables
``NFQUEUE`` target through nft_compat in an ``inet`` table. Debian's stock 6.1 kernel loads nf_tables,
nft_compat and nfnetlink_queue on demand but not xt_NFQUEUE: for an inet table nft_compat asks for a module
named from the family's xtables prefix, and the inet family has none. Every namespace's rule batch then
fails with ENOENT after a usermode-helper round trip; in the TCG VM of ``tests/vm``, 148 namespaces of
those round trips outlasted the delay daemon's 30 s reply timeout.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from topologies.errors import ApplyError

log = logging.getLogger(__name__)

MODPROBE_CANDIDATES = ("/usr/sbin/modprobe", "/sbin/modprobe")
#: modprobe of one small module takes ~10 ms natively and ~0.5 s in the TCG VM
MODPROBE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class KernelPaths:
    """Where the kernel shows its modules and targets (a test points these at a fake tree).

    Attributes
    ----------
    sys_module : Path
        ``/sys/module``: a directory per loaded module (and per built-in one that has parameters).
    proc : Path
        ``/proc``: ``modules`` exists only if the kernel can load modules; ``net/ip_tables_targets`` and
        ``net/ip6_tables_targets`` list the registered xtables targets (once ip_tables is there).
    lib_modules : Path
        ``/lib/modules``: ``<release>/modules.builtin`` lists what is compiled in.
    release : str
        The running kernel's release (``uname -r``).
    modprobe : str or None
        The modprobe program; None: looked up on PATH, then in :data:`MODPROBE_CANDIDATES`.
    """

    sys_module: Path = Path("/sys/module")
    proc: Path = Path("/proc")
    lib_modules: Path = Path("/lib/modules")
    release: str = os.uname().release
    modprobe: str | None = None


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return []


def xt_target_present(target: str, paths: KernelPaths = KernelPaths()) -> bool | None:
    """Whether the xtables target ``target`` (e.g. ``NFQUEUE``) is in the running kernel.

    Returns
    -------
    bool or None
        True: its module ``xt_<target>`` is loaded, built in (``modules.builtin``), or the target is
        registered (``/proc/net/ip*_tables_targets``). False: none of these, and the lists were there to
        look in. None: nothing to tell (no module support and no target list).
    """
    module = f"xt_{target}"
    if (paths.sys_module / module).is_dir():
        return True
    targets = [paths.proc / "net" / f for f in ("ip_tables_targets", "ip6_tables_targets")]
    if any(target in _read_lines(t) for t in targets):
        return True
    builtin = paths.lib_modules / paths.release / "modules.builtin"
    if any(line.rsplit("/", 1)[-1].split(".ko")[0].replace("-", "_") == module for line in _read_lines(builtin)):
        return True
    if (paths.proc / "modules").exists() or any(t.exists() for t in targets):
        return False
    return None


def _modprobe(paths: KernelPaths) -> str | None:
    if paths.modprobe is not None:
        return paths.modprobe
    return shutil.which("modprobe") or next((p for p in MODPROBE_CANDIDATES if os.access(p, os.X_OK)), None)


def ensure_xt_target(target: str, why: str, paths: KernelPaths = KernelPaths()) -> bool:
    """Make sure the xtables target ``target`` is in the kernel, loading ``xt_<target>`` with modprobe.

    Parameters
    ----------
    target : str
        xtables target name, as nft_compat asks for it (``NFQUEUE``).
    why : str
        Who needs it, for the error message (``the userspace shaper's NFQUEUE rules``).
    paths : KernelPaths
        Where to look (the real kernel's by default).

    Returns
    -------
    bool
        True if this call loaded the module, False if it was already there (or the kernel, without
        module support or target lists, cannot tell: its own error will then come from the rule).

    Raises
    ------
    ApplyError
        The module is absent and modprobe is missing, fails, or succeeds without loading it; one line
        naming the module, who needs it and modprobe's last line of error.
    """
    present = xt_target_present(target, paths)
    if present is not False:
        return False
    module = f"xt_{target}"
    modprobe = _modprobe(paths)
    if modprobe is None:
        raise ApplyError(f"kernel module {module} is needed for {why} and is not loaded, and no modprobe was "
                         f"found to load it (apt-get install kmod, or load it by hand)",
                         operation="load kernel module")
    argv = [modprobe, module]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=MODPROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ApplyError(f"kernel module {module} is needed for {why} and is not loaded; {modprobe} {module} "
                         f"failed: {e}", operation="load kernel module") from None
    if done.returncode != 0:
        said = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise ApplyError(f"kernel module {module} is needed for {why} and is not loaded; {modprobe} {module} "
                         f"exited {done.returncode}: {said[-1] if said else 'no message'}",
                         operation="load kernel module")
    if xt_target_present(target, paths) is False:
        raise ApplyError(f"kernel module {module} is needed for {why}; {modprobe} {module} exited 0 but the "
                         f"module is not loaded (an 'install' or 'blacklist' rule in /etc/modprobe.d?)",
                         operation="load kernel module")
    log.info("loaded kernel module %s for %s", module, why)
    return True
