#!/usr/bin/env bash
# The whole kvmfleet stack on this machine: a real control plane, real KVM test hosts
# with NFS and PXE, the operator, and the xCAT guide's examples adapted to the testbed.
#
#   hack/stack.sh up       install what is missing, start everything, apply the examples
#   hack/stack.sh down     stop everything `up` started (operator, testbed, control plane)
#   hack/stack.sh status   one line per component; exit 1 if something is down
#   hack/stack.sh env      `export KUBECONFIG=... PATH=...` for `eval` (kubectl, kubectl kvm)
#   hack/stack.sh logs     follow the operator's log
#
# Options (environment): KVMFLEET_HOSTS=2 (testbed hosts), KVMFLEET_NO_EXAMPLES=1.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${KVMFLEET_RUN_DIR:-${REPO}/.run}"
STATE="${RUN_DIR}/stack"
cd "${REPO}"
say() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

# shellcheck source=hack/lib/deps.sh
source "${REPO}/hack/lib/deps.sh"

kubectl_() { "${KUBECTL}" --kubeconfig "${KUBECONFIG}" "$@"; }

load_env() {
    eval "$(bash hack/cluster.sh env)"
    KUBECTL="$(command -v kubectl)"
}

operator_alive() {
    [ -f "${STATE}/operator.pid" ] || return 1
    local pid
    pid="$(cat "${STATE}/operator.pid")"
    [ -r "/proc/${pid}/cmdline" ] && tr '\0' ' ' < "/proc/${pid}/cmdline" | grep -q "kvmfleet run"
}

host_manifests() {
    # KvmHosts for the testbed hosts (pinned host keys), their SSH key Secret.
    "${REPO}/.venv/bin/python" - "${RUN_DIR}/testbed/hosts.json" <<'EOF'
import json, sys
tb = json.load(open(sys.argv[1]))
key = open(tb["hosts"][0]["privateKeyPath"]).read()
docs = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kvmfleet-system"}},
    {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/ssh-auth",
     "metadata": {"name": "testbed-ssh", "namespace": "kvmfleet-system"},
     "stringData": {"ssh-privatekey": key}},
]
for h in tb["hosts"]:
    docs.append({
        "apiVersion": "kvmfleet.io/v1alpha1", "kind": "KvmHost",
        "metadata": {"name": h["name"]},
        "spec": {
            "address": h["address"], "port": h["port"], "user": h["user"],
            "sshKeySecretRef": {"name": "testbed-ssh", "namespace": "kvmfleet-system"},
            "hostKey": h["hostKey"], "hostKeyPolicy": "Strict",
            "bridges": [{"name": "br0", "interface": "eth0"}],
            "storagePools": [
                {"name": "shared", "url": tb["nfs"]["url"]},
                {"name": "local", "url": "dir:///var/lib/kvmfleet/images"},
            ],
            "nfsAccess": "Direct",
        },
    })
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
EOF
}

vm_manifest() {
    # The xCAT guide's kvm1 (2 CPUs, 1 GiB, br0 virtio, 20 GiB disk, serial 0/115200),
    # on the testbed's shared NFS storage.
    local nfs_url
    nfs_url="$("${REPO}/.venv/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["nfs"]["url"])' "${RUN_DIR}/testbed/hosts.json")"
    cat <<EOF
apiVersion: kvmfleet.io/v1alpha1
kind: VirtualNode
metadata:
  name: kvm1
  namespace: default
spec:
  hostRef: kvmhost1
  cpus: 2
  memory: 1Gi
  nics:
    - bridge: br0
      model: virtio
  disks:
    - name: hda
      size: 20Gi
      storage: ${nfs_url}
  serial:
    port: 0
    speed: 115200
  runStrategy: Always
  os: busybox
  arch: x86_64
  profile: compute
EOF
}

cmd_up() {
    install_system_deps
    ensure_venv
    bash hack/cluster.sh up
    bash hack/testbed.sh up --hosts "${KVMFLEET_HOSTS:-2}"
    load_env
    mkdir -p "${STATE}"
    say "applying the CRDs"
    kubectl_ apply -f crds/ >/dev/null
    kubectl_ wait --for=condition=Established --timeout=60s \
        crd/kvmhosts.kvmfleet.io crd/virtualnodes.kvmfleet.io crd/vmmasters.kvmfleet.io >/dev/null
    say "applying the testbed's KvmHosts and their SSH key Secret"
    host_manifests | kubectl_ apply -f - >/dev/null
    if operator_alive; then
        say "the operator already runs (pid $(cat "${STATE}/operator.pid"))"
    else
        say "starting the operator (log: ${STATE}/operator.log)"
        setsid "${REPO}/.venv/bin/kvmfleet" run --metrics-port "${KVMFLEET_METRICS_PORT:-8080}" \
            --health-port "${KVMFLEET_HEALTH_PORT:-8081}" --bind-address 127.0.0.1 \
            >>"${STATE}/operator.log" 2>&1 < /dev/null &
        echo "$!" > "${STATE}/operator.pid"
        local i
        for i in $(seq 1 60); do
            curl -fsS "http://127.0.0.1:${KVMFLEET_HEALTH_PORT:-8081}/healthz" >/dev/null 2>&1 && break
            operator_alive || die "the operator exited; see ${STATE}/operator.log"
            sleep 0.5
        done
    fi
    say "waiting for the KvmHosts to become Ready (up to 3 minutes)"
    kubectl_ wait --for=condition=Ready --timeout=180s kvmhost --all >/dev/null \
        || say "not all hosts are Ready yet: kubectl describe kh"
    if [ "${KVMFLEET_NO_EXAMPLES:-0}" != 1 ]; then
        say "applying the example VM kvm1 (xCAT: mkvm kvm1 -s 20G; rpower kvm1 on)"
        vm_manifest | kubectl_ apply -f - >/dev/null
        say "waiting for kvm1 to run (up to 3 minutes)"
        kubectl_ wait --for=condition=Ready --timeout=180s vn/kvm1 >/dev/null \
            || say "kvm1 is not Ready yet: kubectl describe vn kvm1"
    fi
    kubectl_ get kvmfleet -A || true
    cat >&2 <<EOF

[stack] ready. Next:
  eval "\$(hack/stack.sh env)"
  kubectl get kvmfleet -A               # all three kinds
  kubectl get kh                        # the hypervisors (xCAT: lsdef -t node kvmhost1)
  kubectl get vn -A -o wide             # the VMs
  kubectl describe vn kvm1
  kubectl kvm console kvm1 --until '^KVMFLEET-TICK [0-9]+' --timeout 60   # the guest's counter line
  kubectl kvm console kvm1              # rcons (Ctrl-] leaves); shows what is printed from now on
  curl -s localhost:${KVMFLEET_METRICS_PORT:-8080}/metrics | grep ^kvmfleet_
  hack/testbed.sh exec kvmhost1 -- virsh list --all
  hack/stack.sh logs                    # the operator's log
  hack/stack.sh down                    # stop it all
EOF
}

cmd_down() {
    if operator_alive; then
        local pid
        pid="$(cat "${STATE}/operator.pid")"
        kill "${pid}" 2>/dev/null || true
        for _ in $(seq 1 40); do operator_alive || break; sleep 0.25; done
        operator_alive && kill -9 "${pid}" 2>/dev/null || true
        say "operator stopped"
    fi
    rm -f "${STATE}/operator.pid"
    bash hack/testbed.sh down || true
    bash hack/cluster.sh down || true
}

cmd_status() {
    local rc=0
    if operator_alive; then
        printf '%-24s running (pid %s)\n' operator "$(cat "${STATE}/operator.pid")"
    else
        printf '%-24s stopped\n' operator; rc=1
    fi
    bash hack/cluster.sh status || rc=1
    bash hack/testbed.sh status || rc=1
    return "${rc}"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) bash hack/cluster.sh env; printf 'export PATH=%q:"$PATH"\n' "${REPO}/.venv/bin" ;;  # kubectl-kvm
    logs) exec tail -F "${STATE}/operator.log" ;;
    *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
