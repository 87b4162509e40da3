"""emulator.kernel.modules on a fake kernel tree: when xt_NFQUEUE counts as present, when modprobe runs, and
the one-line errors when it cannot load it. (On a real stock kernel: tests/integration/test_netem_vm.py.)"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from emulator.kernel.modules import KernelPaths, ensure_xt_target, xt_target_present
from topologies.errors import ApplyError

RELEASE = "6.1.0-57-amd64"


def fake_kernel(tmp_path: Path, *, module_support: bool = True) -> KernelPaths:
    (tmp_path / "sys_module").mkdir()
    (tmp_path / "proc" / "net").mkdir(parents=True)
    (tmp_path / "lib_modules" / RELEASE).mkdir(parents=True)
    if module_support:
        (tmp_path / "proc" / "modules").write_text("nf_tables 1 0 - Live 0x0\n")
    return KernelPaths(sys_module=tmp_path / "sys_module", proc=tmp_path / "proc",
                       lib_modules=tmp_path / "lib_modules", release=RELEASE)


def fake_modprobe(tmp_path: Path, body: str) -> str:
    """A modprobe stand-in: records its arguments in calls.txt, then runs ``body`` (Python)."""
    script = tmp_path / "modprobe"
    script.write_text(f"#!{sys.executable}\nimport sys, pathlib\n"
                      f"open({str(tmp_path / 'calls.txt')!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def calls(tmp_path: Path) -> list[str]:
    f = tmp_path / "calls.txt"
    return f.read_text().splitlines() if f.exists() else []


def with_modprobe(paths: KernelPaths, modprobe: str) -> KernelPaths:
    return KernelPaths(paths.sys_module, paths.proc, paths.lib_modules, paths.release, modprobe)


def test_absent_module_is_loaded_with_modprobe_as_an_argument_list(tmp_path: Path) -> None:
    paths = fake_kernel(tmp_path)
    assert xt_target_present("NFQUEUE", paths) is False
    mp = fake_modprobe(tmp_path, f"pathlib.Path({str(paths.sys_module)!r}, sys.argv[1]).mkdir()")
    assert ensure_xt_target("NFQUEUE", "the test's rules", with_modprobe(paths, mp)) is True
    assert calls(tmp_path) == ["xt_NFQUEUE"]
    assert xt_target_present("NFQUEUE", paths) is True
    # loaded now: a second call does not run modprobe again
    assert ensure_xt_target("NFQUEUE", "the test's rules", with_modprobe(paths, mp)) is False
    assert calls(tmp_path) == ["xt_NFQUEUE"]


@pytest.mark.parametrize("how", ["sysfs", "builtin", "targets"])
def test_present_module_runs_no_modprobe(tmp_path: Path, how: str) -> None:
    paths = fake_kernel(tmp_path)
    if how == "sysfs":
        (paths.sys_module / "xt_NFQUEUE").mkdir()
    elif how == "builtin":
        (paths.lib_modules / RELEASE / "modules.builtin").write_text(
            "kernel/net/netfilter/x_tables.ko\nkernel/net/netfilter/xt_NFQUEUE.ko\n")
    else:  # a kernel without module support lists its built-in targets here (this host's does)
        (paths.proc / "net" / "ip_tables_targets").write_text("NFQUEUE\nNFQUEUE\nAUDIT\nDNAT\n")
    mp = fake_modprobe(tmp_path, "sys.exit(1)")
    assert ensure_xt_target("NFQUEUE", "x", with_modprobe(paths, mp)) is False
    assert calls(tmp_path) == []


def test_other_targets_do_not_count(tmp_path: Path) -> None:
    paths = fake_kernel(tmp_path)
    (paths.sys_module / "xt_NFLOG").mkdir()
    (paths.proc / "net" / "ip_tables_targets").write_text("NFLOG\nDNAT\n")
    (paths.lib_modules / RELEASE / "modules.builtin").write_text("kernel/net/netfilter/xt_NFQUEUE2.ko\n")
    assert xt_target_present("NFQUEUE", paths) is False


def test_failing_modprobe_is_one_line_naming_module_and_reason(tmp_path: Path) -> None:
    paths = fake_kernel(tmp_path)
    mp = fake_modprobe(tmp_path, "sys.stderr.write('modprobe: FATAL: Module xt_NFQUEUE not found in directory "
                                 "/lib/modules/6.1.0-57-amd64\\n'); sys.exit(1)")
    with pytest.raises(ApplyError) as e:
        ensure_xt_target("NFQUEUE", "the userspace shaper's NFQUEUE rules", with_modprobe(paths, mp))
    msg = str(e.value)
    assert "\n" not in msg
    assert "xt_NFQUEUE" in msg and "userspace shaper" in msg and "exited 1" in msg
    assert "FATAL: Module xt_NFQUEUE not found" in msg


def test_modprobe_that_loads_nothing_is_an_error(tmp_path: Path) -> None:
    paths = fake_kernel(tmp_path)
    mp = fake_modprobe(tmp_path, "sys.exit(0)")  # e.g. 'install xt_NFQUEUE /bin/true' in modprobe.d
    with pytest.raises(ApplyError, match="exited 0 but the module is not loaded"):
        ensure_xt_target("NFQUEUE", "x", with_modprobe(paths, mp))


def test_missing_modprobe_is_an_error(tmp_path: Path) -> None:
    paths = with_modprobe(fake_kernel(tmp_path), str(tmp_path / "no-such-modprobe"))
    with pytest.raises(ApplyError, match="xt_NFQUEUE.*failed"):
        ensure_xt_target("NFQUEUE", "x", paths)


def test_kernel_that_cannot_tell_is_left_to_answer_itself(tmp_path: Path) -> None:
    # no module support and no target list: nothing to load, nothing to check; no modprobe is run
    paths = fake_kernel(tmp_path, module_support=False)
    mp = fake_modprobe(tmp_path, "sys.exit(1)")
    assert xt_target_present("NFQUEUE", paths) is None
    assert ensure_xt_target("NFQUEUE", "x", with_modprobe(paths, mp)) is False
    assert calls(tmp_path) == []
