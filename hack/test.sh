#!/usr/bin/env bash
# The test command: installs everything it needs, then runs the checks and the whole suite.
#
#   hack/test.sh              lint (ruff), types (mypy --strict), layering (import-linter),
#                             unit tests, and integration tests against a real kube-apiserver
#                             1.20.2 and the real hypervisor testbed (libvirtd/QEMU/sshd/NFS).
#   hack/test.sh -k EXPR ...  extra arguments go to pytest.
#
# KVMFLEET_TEST_WORKERS (default 2) test processes run side by side (pytest-xdist, a
# module at a time each); worker K > 0 gets its own control plane and testbed (instance
# KVMFLEET_INSTANCE+K, run dir <run>/wK; see tests/conftest.py). 1 runs everything in one.
#
# It builds/starts what is missing (control plane: hack/cluster.sh, testbed: hack/testbed.sh)
# and stops again what it started itself, unless KVMFLEET_KEEP=1.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO}"
say() { printf '[test] %s\n' "$*" >&2; }
# phase NAME : note how long the previous phase took (printed at the end).
TIMES=() PHASE='' PHASE_START=${SECONDS}
phase() {
    [ -n "${PHASE}" ] && TIMES+=("${PHASE} $((SECONDS - PHASE_START))s")
    PHASE="$1" PHASE_START=${SECONDS}
    if [ -n "$1" ]; then say "$1"; fi
}

started_cluster=0
started_testbed=0
cleanup() {
    phase ''
    say "durations: ${TIMES[*]:-} (total $((SECONDS))s)"
    if [ "${KVMFLEET_KEEP:-0}" != "1" ]; then
        [ "${started_testbed}" = 1 ] && bash hack/testbed.sh down || true
        [ "${started_cluster}" = 1 ] && bash hack/cluster.sh down || true
    fi
}
trap cleanup EXIT

# shellcheck source=hack/lib/deps.sh
source "${REPO}/hack/lib/deps.sh"
# Every Debian package the tests, the control plane and the testbed use (hack/lib/packages.tsv),
# then a check that each of their commands and devices is really there: a missing one fails
# here, in seconds, naming its package.
phase "install (Debian packages, .venv)"
install_system_deps
ensure_venv
VENV="${REPO}/.venv"
phase "preflight"
preflight

phase "ruff"
"${VENV}/bin/ruff" check .
phase "mypy --strict"
"${VENV}/bin/mypy" --strict operator/kvmfleet
phase "import-linter (layering)"
"${VENV}/bin/lint-imports"

phase "control plane (hack/cluster.sh)"
if ! bash hack/cluster.sh status >/dev/null 2>&1; then
    [ -d "${KVMFLEET_RUN_DIR:-${REPO}/.run}/cluster" ] || started_cluster=1
    bash hack/cluster.sh up
fi
phase "testbed (hack/testbed.sh)"
# Three test hypervisors: two with KVM hidden (the tiny guest only boots under TCG here,
# and they exercise the Emulated path) and one with KVM (the hardware path).
export KVMFLEET_TESTBED_UP_ARGS="${KVMFLEET_TESTBED_UP_ARGS:---hosts 3 --kvm-hosts 3}"
testbed_rc=0
bash hack/testbed.sh status >/dev/null 2>&1 || testbed_rc=$?
[ "${testbed_rc}" = 3 ] && started_testbed=1
# shellcheck disable=SC2086  # the options are words
bash hack/testbed.sh up ${KVMFLEET_TESTBED_UP_ARGS}

phase "pytest"
export KVMFLEET_KEEP_CLUSTER=1 KVMFLEET_KEEP_TESTBED=1
WORKERS="${KVMFLEET_TEST_WORKERS:-2}"
if [ "${WORKERS}" -gt 1 ]; then
    "${VENV}/bin/python" -m pytest -n "${WORKERS}" --dist loadfile "$@"
else
    "${VENV}/bin/python" -m pytest "$@"
fi
