"""The pure parts of the qemu netem harness: kernel discovery, module order, initramfs, markers, job."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.vm import netemvm
from tests.vm.netemvm import (
    ConfigError,
    CpioEntry,
    Marker,
    VmConfig,
    VmUnavailableError,
    cpio_newc,
    find_kernel,
    module_load_order,
    module_name,
    parse_marker,
    parse_modules_dep,
)

# ---------------------------------------------------------------------------------------------- kernel


def _fake_kernel(boot: Path, mods: Path, version: str, with_netem: bool) -> None:
    boot.mkdir(exist_ok=True)
    (boot / f"vmlinuz-{version}").write_bytes(b"kernel")
    d = mods / version
    d.mkdir(parents=True)
    lines = ["kernel/drivers/net/veth.ko:"]
    if with_netem:
        lines.append("kernel/net/sched/sch_netem.ko:")
    (d / "modules.dep").write_text("\n".join(lines) + "\n")


def test_find_kernel_picks_the_newest_that_has_netem(tmp_path: Path) -> None:
    boot, mods = tmp_path / "boot", tmp_path / "modules"
    _fake_kernel(boot, mods, "6.1.0-9-amd64", True)
    _fake_kernel(boot, mods, "6.1.0-56-amd64", True)
    _fake_kernel(boot, mods, "6.5.0-1-custom", False)  # newest, but no sch_netem
    k = find_kernel(boot, mods)
    assert k.version == "6.1.0-56-amd64"  # 56 > 9 numerically
    assert k.vmlinuz == boot / "vmlinuz-6.1.0-56-amd64"
    assert k.modules_dir == mods / "6.1.0-56-amd64"
    assert find_kernel(boot, mods, version="6.1.0-9-amd64").version == "6.1.0-9-amd64"


def test_find_kernel_without_netem_says_how_to_install_one(tmp_path: Path) -> None:
    boot, mods = tmp_path / "boot", tmp_path / "modules"
    _fake_kernel(boot, mods, "6.5.0-1-custom", False)
    (boot / "vmlinuz-9.9.9-orphan").write_bytes(b"no modules dir at all")
    with pytest.raises(VmUnavailableError, match="apt-get install linux-image-amd64"):
        find_kernel(boot, mods)
    with pytest.raises(VmUnavailableError, match="apt-get install linux-image-amd64"):
        find_kernel(tmp_path / "empty", mods)


def test_version_key_orders_numerically() -> None:
    versions = ["6.10.1", "6.1.0-56-amd64", "5.10.0-28-amd64", "6.1.0-9-amd64"]
    assert sorted(versions, key=netemvm.version_key) == [
        "5.10.0-28-amd64", "6.1.0-9-amd64", "6.1.0-56-amd64", "6.10.1"]


# --------------------------------------------------------------------------------------------- modules


def test_module_name_strips_path_suffix_and_dashes() -> None:
    assert module_name("kernel/net/9p/9pnet_virtio.ko") == "9pnet_virtio"
    assert module_name("kernel/fs/overlayfs/overlay.ko.xz") == "overlay"
    assert module_name("kernel/drivers/x/snd-hda-core.ko.zst") == "snd_hda_core"


DEP = """
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/net/9p/9pnet.ko:
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/netfs/netfs.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
kernel/net/sched/sch_netem.ko:
"""


def test_parse_modules_dep() -> None:
    deps = parse_modules_dep(DEP)
    assert deps["kernel/fs/9p/9p.ko"] == ["kernel/net/9p/9pnet.ko", "kernel/fs/fscache/fscache.ko",
                                          "kernel/fs/netfs/netfs.ko"]
    assert deps["kernel/net/sched/sch_netem.ko"] == []
    assert len(deps) == 7


def test_parse_modules_dep_rejects_a_line_without_colon() -> None:
    with pytest.raises(ConfigError, match=r"modules.dep:3.*expected 'module-path: dependencies'"):
        parse_modules_dep("a.ko:\n\nkernel/broken.ko kernel/other.ko\n")


def test_load_order_puts_dependencies_first_and_each_module_once() -> None:
    order = module_load_order(parse_modules_dep(DEP), ["9p", "9pnet_virtio", "sch_netem", "9p"])
    names = [module_name(p) for p in order]
    assert sorted(names) == sorted(set(names))
    assert set(names) == {"9p", "9pnet", "fscache", "netfs", "9pnet_virtio", "virtio", "sch_netem"}
    pos = {n: i for i, n in enumerate(names)}
    for mod, deps in parse_modules_dep(DEP).items():
        for dep in deps:
            assert pos[module_name(dep)] < pos[module_name(mod)], (dep, mod)


def test_load_order_skips_builtin_and_rejects_unknown() -> None:
    deps = parse_modules_dep(DEP)
    assert module_load_order(deps, ["ipv6", "sch_netem"], builtin={"ipv6"}) == [
        "kernel/net/sched/sch_netem.ko"]
    with pytest.raises(ConfigError, match="'sch_nonesuch' is neither in modules.dep nor built in"):
        module_load_order(deps, ["sch_netem", "sch_nonesuch"])


def test_load_order_detects_a_cycle() -> None:
    deps = parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n")
    with pytest.raises(ConfigError, match="cycle"):
        module_load_order(deps, ["a"])


def _installed_kernel():
    try:
        return find_kernel()
    except VmUnavailableError as e:
        pytest.skip(str(e))


# Modules without soft dependencies: kmod also loads a "softdep" (libcrc32c -> crc32c), which this
# harness leaves to the guest's on-demand module loading.
@pytest.mark.parametrize("name", ["9p", "virtio_pci", "sch_netem", "bridge"])
def test_load_order_agrees_with_kmod_on_the_installed_kernel(name: str) -> None:
    kernel = _installed_kernel()
    if shutil.which("modprobe") is None and not Path("/sbin/modprobe").exists():
        pytest.skip("kmod's modprobe not installed")
    modprobe = shutil.which("modprobe") or "/sbin/modprobe"
    shown = subprocess.run([modprobe, "--show-depends", "-S", kernel.version, name], capture_output=True,
                           text=True, check=True).stdout.split("\n")
    theirs = [module_name(line.split()[1]) for line in shown if line.startswith("insmod ")]
    deps = parse_modules_dep((kernel.modules_dir / "modules.dep").read_text())
    ours = [module_name(p) for p in module_load_order(deps, [name])]
    assert set(ours) == set(theirs)
    assert ours[-1] == name
    # Any order is right if every module comes after all it depends on.
    pos = {n: i for i, n in enumerate(ours)}
    by_name = {module_name(p): p for p in deps}
    for n in ours:
        assert all(pos[module_name(d)] < pos[n] for d in deps[by_name[n]])


# ------------------------------------------------------------------------------------------- initramfs


def test_elf_is_static() -> None:
    if not Path("/bin/busybox").exists():
        pytest.skip("busybox-static not installed")
    assert netemvm.elf_is_static(Path("/bin/busybox")) is True
    assert netemvm.elf_is_static(Path(os.path.realpath(sys.executable))) is False


def test_elf_is_static_rejects_a_script(tmp_path: Path) -> None:
    script = tmp_path / "x.sh"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(ConfigError, match="not an ELF file"):
        netemvm.elf_is_static(script)


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
def test_cpio_archive_is_read_back_by_gnu_cpio(tmp_path: Path) -> None:
    entries = [CpioEntry("d", stat.S_IFDIR | 0o755),
               CpioEntry("d/hello.txt", stat.S_IFREG | 0o644, b"hello\n"),
               CpioEntry("d/odd", stat.S_IFREG | 0o755, b"x" * 4097),  # not a multiple of 4
               CpioEntry("d/link", stat.S_IFLNK | 0o777, b"hello.txt")]
    archive = cpio_newc(entries)
    assert archive == cpio_newc(entries)  # deterministic: cacheable
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=archive, capture_output=True, check=True)
    assert listing.stdout.decode().split() == ["d", "d/hello.txt", "d/odd", "d/link"]
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-i", "-d", "--quiet", "--no-absolute-filenames"], input=archive, cwd=out,
                   check=True)
    assert (out / "d/hello.txt").read_bytes() == b"hello\n"
    assert (out / "d/odd").read_bytes() == b"x" * 4097
    assert os.access(out / "d/odd", os.X_OK)
    assert os.readlink(out / "d/link") == "hello.txt"


def test_cpio_entry_rejects_absolute_names() -> None:
    with pytest.raises(ConfigError, match="relative"):
        CpioEntry("/init", stat.S_IFREG | 0o755)


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
def test_base_initramfs_for_the_installed_kernel_is_cached(tmp_path: Path) -> None:
    kernel = _installed_kernel()
    try:
        netemvm.find_busybox()
    except VmUnavailableError as e:
        pytest.skip(str(e))
    first = netemvm.build_base_initramfs(kernel, cache_dir=tmp_path)
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=first.read_bytes(), capture_output=True,
                             check=True).stdout.decode().split()
    for member in ("init", "bin/busybox", "dev/console", "satnetem/guest_exec.py", "satnetem/modprobe",
                   "satnetem/modules/sch_netem.ko", "satnetem/modules/sch_htb.ko",
                   "satnetem/modules/sch_tbf.ko", "satnetem/modules/veth.ko", "satnetem/modules/9p.ko",
                   "satnetem/modules/overlay.ko", "satnetem/modules.order"):
        assert member in listing, member
    mtime = first.stat().st_mtime_ns
    assert netemvm.build_base_initramfs(kernel, cache_dir=tmp_path) == first
    assert first.stat().st_mtime_ns == mtime  # reused, not rebuilt
    other = netemvm.build_base_initramfs(kernel, extra_modules=("dummy",), cache_dir=tmp_path)
    assert other != first and other.exists() and not first.exists()  # a new key replaces the old image


# ----------------------------------------------------------------------------------------- marker, job


def test_parse_marker() -> None:
    n = "0123abcd"
    assert parse_marker(f"@@satnetem-vm@@ {n} ready", n) == Marker("ready")
    assert parse_marker(f"@@satnetem-vm@@ {n} exit=0", n) == Marker("exit", 0)
    assert parse_marker(f"@@satnetem-vm@@ {n} exit=137  ", n) == Marker("exit", 137)
    assert parse_marker(f"@@satnetem-vm@@ {n} setup-failed", n) == Marker("setup-failed")
    # a kernel message printed in front on the same console line
    assert parse_marker(f"[    6.1] random: crng init done@@satnetem-vm@@ {n} exit=2", n) == Marker("exit", 2)


@pytest.mark.parametrize("line", [
    "@@satnetem-vm@@ ffff0000 exit=0",  # another run's nonce (e.g. a nested harness)
    "@@satnetem-vm@@ 0123abcd exit=",  # truncated
    "@@satnetem-vm@@ 0123abcd exit=-1",
    "@@satnetem-vm@@ 0123abcd exit=1 and more",
    "exit=0",
    "",
])
def test_parse_marker_ignores_other_lines(line: str) -> None:
    assert parse_marker(line, "0123abcd") is None


def test_guest_environment_keeps_essentials_only() -> None:
    host = {"PATH": "/usr/bin:/bin", "HOME": "/root", "CI": "true", "AWS_SECRET_ACCESS_KEY": "x",
            "LD_PRELOAD": "/evil.so", "TERM": "xterm-256color"}
    env = netemvm.guest_environment(host, venv_prefix="/work/main/.venv")
    assert env["PATH"] == "/work/main/.venv/bin:/usr/bin:/bin"
    assert env["VIRTUAL_ENV"] == "/work/main/.venv"
    assert env["CI"] == "true"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["TERM"] == "dumb"
    assert env["SATNETEM_IN_VM"] == "1"
    assert "AWS_SECRET_ACCESS_KEY" not in env and "LD_PRELOAD" not in env
    again = netemvm.guest_environment(env, venv_prefix="/work/main/.venv")
    assert again["PATH"] == env["PATH"]  # not prepended twice
    assert netemvm.guest_environment({}, [("TERM", "vt100")])["TERM"] == "vt100"
    assert netemvm.guest_environment({})["PATH"] == netemvm.DEFAULT_PATH


def test_job_carries_argv_as_data() -> None:
    argv = ["python", "-c", "print('$(rm -rf /)'); `x`", "a b", "--", "é"]
    entries = {e.name: e.data for e in netemvm.job_entries(
        argv, {"PATH": "/bin"}, "/work/main", "abcd", "/usr/bin/python3", [("share0", Path("/tmp/r"))])}
    job = json.loads(entries["satnetem/job.json"])
    assert job == {"argv": argv, "env": {"PATH": "/bin"}, "cwd": "/work/main"}
    assert entries["satnetem/nonce"] == b"abcd\n"
    assert entries["satnetem/shares"] == b"share0\t/tmp/r\n"
    with pytest.raises(ConfigError, match="no command"):
        netemvm.job_entries([], {}, "/", "abcd", "/usr/bin/python3", [])


@pytest.mark.parametrize("kwargs, key", [
    ({"memory_mb": 64}, "memory_mb"),
    ({"cpus": 0}, "cpus"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"shares": (Path("relative"),)}, "shares"),
    ({"shares": (Path("/no/such/dir/anywhere"),)}, "shares"),
    ({"shares": (Path("/"),)}, "shares"),
    ({"env": (("A=B", "c"),)}, "env"),
])
def test_vm_config_rejects_bad_values(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        VmConfig(**kwargs)


def test_vm_config_rejects_a_share_with_a_newline(tmp_path: Path) -> None:
    odd = tmp_path / "a\nb"
    odd.mkdir()
    with pytest.raises(ConfigError, match="tabs or newlines"):
        VmConfig(shares=(odd,))


def test_qemu_command(tmp_path: Path) -> None:
    share = tmp_path / "with,comma"
    share.mkdir()
    kernel = netemvm.KernelImage("6.1.0-56-amd64", Path("/boot/vmlinuz-6.1.0-56-amd64"),
                                 Path("/lib/modules/6.1.0-56-amd64"))
    cfg = VmConfig(memory_mb=1024, cpus=1, shares=(share,))
    cmd = netemvm.qemu_command(cfg, kernel, Path("/tmp/i.cpio"), [("share0", share)])
    assert cmd[0] == "qemu-system-x86_64"
    assert cmd[cmd.index("-accel") + 1] == "tcg"
    assert cmd[cmd.index("-m") + 1] == "1024" and cmd[cmd.index("-smp") + 1] == "1"
    assert "-no-reboot" in cmd and "panic=-1" in cmd[cmd.index("-append") + 1]
    virtfs = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-virtfs"]
    assert "path=/,mount_tag=hostroot" in virtfs[0] and "readonly=on" in virtfs[0]
    assert f"path={tmp_path}/with,,comma,mount_tag=share0" in virtfs[1]
    assert "readonly" not in virtfs[1]


def test_cli_takes_the_command_after_double_dash(capsys) -> None:
    ns = netemvm.build_parser().parse_args(["--memory-mb", "1024", "--", "pytest", "-q", "--timeout-s"])
    assert ns.memory_mb == 1024
    assert ns.argv == ["--", "pytest", "-q", "--timeout-s"]
    with pytest.raises(SystemExit) as e:
        netemvm.main(["--cpus", "1"])
    assert e.value.code == 2
    assert "no command given" in capsys.readouterr().err


def test_cli_reports_a_bad_value_without_booting(capsys) -> None:
    assert netemvm.main(["--memory-mb", "10", "--", "true"]) == 2
    assert "memory_mb must be in [256, 65536]" in capsys.readouterr().err
