"""The Vagrant lab and the shell scripts: vagrant validates the Vagrantfile, shellcheck passes."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ["install.sh", "run-tests", ".ci/run", "vagrant/provision.sh"]


def need(tool):
    if shutil.which(tool) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is not installed (install.sh installs it)")
        pytest.skip(f"{tool} is not installed (./install.sh installs it)")


def test_vagrantfile_validates(tmp_path):
    need("vagrant")
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "vagrant.d"), "VAGRANT_CHECKPOINT_DISABLE": "1"}
    r = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=ROOT / "vagrant", env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validated successfully" in r.stdout


def test_vagrant_provisioner_uses_the_project_install_script():
    text = (ROOT / "vagrant" / "provision.sh").read_text()
    assert "./install.sh" in text and "./run-tests" in text
    assert 'path: "provision.sh"' in (ROOT / "vagrant" / "Vagrantfile").read_text()


def test_shell_scripts_pass_shellcheck():
    need("shellcheck")
    r = subprocess.run(["shellcheck", *SCRIPTS], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
