"""The Vagrant lab and the shell scripts: vagrant validates the Vagrantfile, shellcheck passes."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ["install.sh", "run-tests", ".ci/run", "vagrant/provision.sh", "vagrant/cluster.sh"]


def need(tool):
    if shutil.which(tool) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is not installed (install.sh installs it)")
        pytest.skip(f"{tool} is not installed (./install.sh installs it)")


@pytest.mark.parametrize("workers", ["0", "2"])
def test_vagrantfile_validates(tmp_path, workers):
    """The single VM, and the multi-machine lab: a head and 2 workers (issue 13)."""
    need("vagrant")
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "vagrant.d"), "VAGRANT_CHECKPOINT_DISABLE": "1",
           "SATNETEM_CLUSTER_WORKERS": workers}
    r = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=ROOT / "vagrant", env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validated successfully" in r.stdout
    machines = {"default"} if workers == "0" else {"worker-1", "worker-2"}  # vagrant names some machines only
    assert all(f"==> {m}:" in r.stdout for m in machines), r.stdout
    assert not (ROOT / "vagrant" / ".cluster").exists() or workers == "0", "validate wrote a token"


def test_cluster_lab_starts_ray_as_the_fake_hosts_do():
    """cluster.sh starts each VM's Ray node with ``satnetem cluster start``, whose ``ray start`` arguments and
    environment are those of the fake hosts' nodes (emulator.cluster.raynode): token authentication, no CPU
    reserved, no dashboard, the memory monitor off, and the guard; the service's stop removes the guard."""
    from emulator.cluster.raynode import OBJECT_STORE_BYTES, node_argv, node_env

    text = (ROOT / "vagrant" / "cluster.sh").read_text()
    for want in ("/bin/satnetem cluster start --block --address", "--token %s/satnetem/ray-token",
                 "(--join \"${head_ip}:${port}\" --host \"${host}\")", "(--head)", "/bin/satnetem cluster stop",
                 "mtu 1550"):
        assert want in text, want
    argv = node_argv("ray", "worker", "10.0.0.2", 1, head="10.0.0.1:6379")
    env = node_env("/etc/satnetem/ray-token", "10.0.0.2", base={})
    for want in ("--num-cpus=0", f"--object-store-memory={OBJECT_STORE_BYTES}", "--include-log-monitor=false",
                 '--resources={"satnetem-host-1": 1}', "--address=10.0.0.1:6379"):
        assert want in argv, (want, argv)
    assert "--include-dashboard=false" in node_argv("ray", "head", "10.0.0.1", 0)
    assert env == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "/etc/satnetem/ray-token",
                   "RAY_USAGE_STATS_ENABLED": "0", "RAY_memory_monitor_refresh_ms": "0",
                   "SATNETEM_RAY_NODE": "10.0.0.2"}
    assert 'path: "cluster.sh"' in (ROOT / "vagrant" / "Vagrantfile").read_text()


def test_vagrant_provisioner_uses_the_project_install_script():
    text = (ROOT / "vagrant" / "provision.sh").read_text()
    assert "./install.sh" in text and "./run-tests" in text
    assert 'path: "provision.sh"' in (ROOT / "vagrant" / "Vagrantfile").read_text()


def test_shell_scripts_pass_shellcheck():
    need("shellcheck")
    r = subprocess.run(["shellcheck", *SCRIPTS], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
