#!/usr/bin/env bash
# Provisioner of the satnetem lab VM: the project's own install.sh (one source of truth for what is
# installed), then the test suite. Runs as root inside the VM; safe to run again (vagrant provision).
set -euo pipefail

repo=/home/vagrant/satnetem
export SATNETEM_VENV=/opt/satnetem-venv

if [ ! -x "$repo/install.sh" ]; then
  echo "provision.sh: $repo/install.sh not found: is the synced folder mounted?" >&2
  exit 1
fi

cd "$repo"
./install.sh

if [ "${SATNETEM_VM_RUN_TESTS:-1}" = "1" ]; then
  echo "provision.sh: running the test suite (SATNETEM_VM_RUN_TESTS=0 skips it)"
  ./run-tests
fi
echo "provision.sh: ready. Try: vagrant ssh -c 'cd satnetem && sudo /opt/satnetem-venv/bin/satnetem run'"
