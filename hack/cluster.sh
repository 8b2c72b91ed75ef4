#!/usr/bin/env bash
# A real local Kubernetes control plane for kvmfleet: etcd + kube-apiserver +
# kube-controller-manager 1.20.2 on loopback, built from Debian's source package.
#
#   hack/cluster.sh build    build (or reuse cached) binaries: kube-apiserver, kube-controller-manager, kubectl
#   hack/cluster.sh up       build if needed, start the control plane, write the kubeconfig, wait for /readyz
#   hack/cluster.sh down     stop exactly the processes `up` started and forget their state
#   hack/cluster.sh status   say what runs; exit 1 when the API server is not ready
#   hack/cluster.sh env      print `export KUBECONFIG=... PATH=...` lines for a shell to eval
#   hack/cluster.sh restart-apiserver   fault injection: stop kube-apiserver, start it again, wait for /readyz
#
# Paths (all overridable):
#   KVMFLEET_CACHE   ~/.cache/kvmfleet         built binaries, keyed by version (survives `down`)
#   KVMFLEET_RUN_DIR <repo>/.run               certificates, etcd data, logs, pids, kubeconfig
#   KVMFLEET_API_PORT 16443                    the API server's secure port on 127.0.0.1
#   KVMFLEET_INSTANCE 0                        0-9: instance N shifts every default port by N
#                                              (API 16443+N, etcd 23790+100N, peer 23800+100N,
#                                              KCM 10357+N) so control planes can run side by side
set -euo pipefail

K8S_VERSION=1.20.2
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${KVMFLEET_CACHE:-${HOME}/.cache/kvmfleet}"
# BUILD_REV changes whenever the patches below change, so cached binaries are rebuilt.
BUILD_REV=2
BIN_DIR="${CACHE}/kubernetes-${K8S_VERSION}-r${BUILD_REV}/bin"
RUN_DIR="${KVMFLEET_RUN_DIR:-${REPO}/.run}"
STATE="${RUN_DIR}/cluster"
INSTANCE="${KVMFLEET_INSTANCE:-0}"
[[ "${INSTANCE}" =~ ^[0-9]$ ]] || { printf '[cluster] ERROR: KVMFLEET_INSTANCE must be 0-9\n' >&2; exit 1; }
API_PORT="${KVMFLEET_API_PORT:-$((16443 + INSTANCE))}"
ETCD_PORT="${KVMFLEET_ETCD_PORT:-$((23790 + 100 * INSTANCE))}"
ETCD_PEER_PORT="${KVMFLEET_ETCD_PEER_PORT:-$((23800 + 100 * INSTANCE))}"
KCM_PORT="${KVMFLEET_KCM_PORT:-$((10357 + INSTANCE))}"
KUBECONFIG_FILE="${STATE}/kubeconfig"

# shellcheck source=hack/lib/deps.sh
source "${REPO}/hack/lib/deps.sh"

say() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] ERROR: %s\n' "$*" >&2; exit 1; }

apt_install() {
    # apt_install PKG...: install the Debian packages that are missing, updating the lists once.
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q "install ok installed" || missing+=("${pkg}")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    say "installing Debian packages: ${missing[*]}"
    wait_for_apt
    if [ ! -e "${CACHE}/.apt-updated" ] || [ -n "$(find "${CACHE}/.apt-updated" -mmin +720 2>/dev/null)" ]; then
        apt-get update -q >&2
        mkdir -p "${CACHE}" && touch "${CACHE}/.apt-updated"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}

wait_for_apt() {
    local i
    for i in $(seq 1 120); do
        if ! fuser /var/lib/dpkg/lock-frontend /var/lib/apt/lists/lock >/dev/null 2>&1; then return 0; fi
        [ "${i}" -eq 1 ] && say "waiting for another apt/dpkg to finish"
        sleep 5
    done
    die "apt is still locked after 10 minutes"
}

ensure_deb_src() {
    # `apt-get source` needs a deb-src entry for bookworm main.
    if grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        return 0
    fi
    say "adding a deb-src entry for bookworm main (/etc/apt/sources.list.d/kvmfleet-src.sources)"
    cat > /etc/apt/sources.list.d/kvmfleet-src.sources <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    wait_for_apt
    apt-get update -q >&2
    touch "${CACHE}/.apt-updated"
}

cmd_build() {
    if [ -x "${BIN_DIR}/kube-apiserver" ] && [ -x "${BIN_DIR}/kube-controller-manager" ] && [ -x "${BIN_DIR}/kubectl" ]; then
        return 0
    fi
    mkdir -p "${CACHE}"
    local -a pkgs
    mapfile -t pkgs < <(deps_packages cluster-build cluster)
    apt_install "${pkgs[@]}"
    ensure_deb_src
    local src="${CACHE}/src"
    mkdir -p "${src}"
    local tree
    tree="$(find "${src}" -maxdepth 1 -type d -name 'kubernetes-*really1.20.2' | head -n1)"
    if [ -z "${tree}" ]; then
        say "fetching the Debian source of kubernetes ${K8S_VERSION} (about 35 MB)"
        (cd "${src}" && apt-get source -q kubernetes >&2)
        tree="$(find "${src}" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)"
    fi
    [ -n "${tree}" ] && [ -f "${tree}/go.mod" ] || die "no kubernetes source tree under ${src}"
    grep -q 'really1.20.2\|1\.20\.2' <<<"${tree}" || die "unexpected kubernetes source version: ${tree}"

    # Go 1.19 + reflect2 1.0.1 segfaults on the first CRD write: use Debian's reflect2 1.0.2.
    local r2=/usr/share/gocode/src/github.com/modern-go/reflect2
    [ -d "${r2}" ] || die "missing ${r2} (package golang-github-modern-go-reflect2-dev)"
    if ! cmp -s "${r2}/reflect2.go" "${tree}/vendor/github.com/modern-go/reflect2/reflect2.go"; then
        say "patching vendor/github.com/modern-go/reflect2 with Debian's 1.0.2"
        rm -rf "${tree}/vendor/github.com/modern-go/reflect2"
        cp -r "${r2}" "${tree}/vendor/github.com/modern-go/reflect2"
    fi

    # Built with Go 1.19, the vendored OpenAPI type validator compares reflect.Values with
    # DeepEqual and takes every empty string for null: a CR with `message: ""` in a typed
    # string field is refused ("must be of type string: null"). Official 1.20.2 builds
    # accept it; test only for nil, as later kube-openapi releases do.
    local tv
    for tv in vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go \
              vendor/github.com/go-openapi/validate/type.go; do
        [ -f "${tree}/${tv}" ] || continue
        if grep -q 'data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data))' "${tree}/${tv}"; then
            say "patching ${tv} (empty strings are not null)"
            sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/' "${tree}/${tv}"
        fi
    done

    say "building kube-apiserver, kube-controller-manager and kubectl ${K8S_VERSION} (about 5 minutes on 2 cores)"
    mkdir -p "${tree}/.go/src/k8s.io"
    [ -L "${tree}/.go/src/k8s.io/kubernetes" ] || ln -s ../../.. "${tree}/.go/src/k8s.io/kubernetes"
    local started=${SECONDS}
    (
        cd "${tree}"
        export GOPATH="${tree}/.go" CGO_ENABLED=0 GOFLAGS=-mod=vendor GO111MODULE=on
        export GOCACHE="${CACHE}/go-build"
        export KUBE_GIT_VERSION="v${K8S_VERSION}" KUBE_GIT_TREE_STATE=clean KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20
        export PATH="/usr/lib/go/bin:${PATH}"
        make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kubectl" >&2
    ) || die "the build failed (see the output above)"
    mkdir -p "${BIN_DIR}.tmp"
    cp "${tree}/_output/bin/kube-apiserver" "${tree}/_output/bin/kube-controller-manager" \
        "${tree}/_output/bin/kubectl" "${BIN_DIR}.tmp/"
    rm -rf "${BIN_DIR}" && mv "${BIN_DIR}.tmp" "${BIN_DIR}"
    say "built in $((SECONDS - started)) s; cached in ${BIN_DIR}"
}

pid_alive() {
    # pid_alive NAME: the recorded process NAME runs and is still the program we started.
    local pidfile="${STATE}/${1}.pid" pid
    [ -f "${pidfile}" ] || return 1
    pid="$(cat "${pidfile}")"
    [ -n "${pid}" ] && [ -r "/proc/${pid}/cmdline" ] || return 1
    tr '\0' ' ' < "/proc/${pid}/cmdline" | grep -q -- "${STATE}"
}

start_bg() {
    # start_bg NAME CMD...: start CMD in its own session, logging to STATE/NAME.log, pid in STATE/NAME.pid.
    local name="$1"; shift
    if pid_alive "${name}"; then
        say "${name} already runs (pid $(cat "${STATE}/${name}.pid"))"
        return 0
    fi
    setsid "$@" >>"${STATE}/${name}.log" 2>&1 < /dev/null &
    echo "$!" > "${STATE}/${name}.pid"
    say "started ${name} (pid $!, log ${STATE}/${name}.log)"
}

make_pki() {
    local pki="${STATE}/pki"
    [ -f "${pki}/apiserver.crt" ] && return 0
    say "creating a CA, the API server certificate and the service-account key"
    mkdir -p "${pki}" && chmod 700 "${pki}"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=kvmfleet-local-ca" \
        -keyout "${pki}/ca.key" -out "${pki}/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
        -keyout "${pki}/apiserver.key" -out "${pki}/apiserver.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1\n' \
        > "${pki}/apiserver.ext"
    openssl x509 -req -in "${pki}/apiserver.csr" -CA "${pki}/ca.crt" -CAkey "${pki}/ca.key" \
        -CAcreateserial -days 3650 -extfile "${pki}/apiserver.ext" -out "${pki}/apiserver.crt" 2>/dev/null
    openssl genrsa -out "${pki}/sa.key" 2048 2>/dev/null
    openssl rsa -in "${pki}/sa.key" -pubout -out "${pki}/sa.pub" 2>/dev/null
    # Static tokens: an admin (system:masters) and the controller manager.
    printf '%s,admin,admin,system:masters\n%s,system:kube-controller-manager,kcm\n' \
        "$(openssl rand -hex 24)" "$(openssl rand -hex 24)" > "${pki}/tokens.csv"
    chmod 600 "${pki}"/*.key "${pki}/tokens.csv"
}

write_kubeconfig() {
    # write_kubeconfig FILE USER TOKEN
    local file="$1" user="$2" token="$3"
    umask 077
    cat > "${file}" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kvmfleet-local
  cluster:
    server: https://127.0.0.1:${API_PORT}
    certificate-authority-data: $(base64 -w0 < "${STATE}/pki/ca.crt")
users:
- name: ${user}
  user:
    token: ${token}
contexts:
- name: kvmfleet-local
  context:
    cluster: kvmfleet-local
    user: ${user}
current-context: kvmfleet-local
EOF
}

api_ready() {
    local token
    token="$(cut -d, -f1 "${STATE}/pki/tokens.csv" | head -n1)"
    curl -fsS --max-time 3 --cacert "${STATE}/pki/ca.crt" -H "Authorization: Bearer ${token}" \
        "https://127.0.0.1:${API_PORT}/readyz" >/dev/null 2>&1
}

start_apiserver() {
    local i
    start_bg kube-apiserver "${BIN_DIR}/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:${ETCD_PORT}" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
        --secure-port "${API_PORT}" --insecure-port 0 \
        --cert-dir "${STATE}/pki/generated" \
        --tls-cert-file "${STATE}/pki/apiserver.crt" --tls-private-key-file "${STATE}/pki/apiserver.key" \
        --client-ca-file "${STATE}/pki/ca.crt" \
        --token-auth-file "${STATE}/pki/tokens.csv" \
        --authorization-mode RBAC \
        --service-account-key-file "${STATE}/pki/sa.pub" \
        --service-account-signing-key-file "${STATE}/pki/sa.key" \
        --service-account-issuer https://kubernetes.default.svc \
        --service-cluster-ip-range 10.96.0.0/24 \
        --allow-privileged=true \
        --profiling=false \
        --v=1
    for i in $(seq 1 120); do
        api_ready && break
        pid_alive kube-apiserver || die "kube-apiserver exited; see ${STATE}/kube-apiserver.log"
        [ "${i}" -eq 120 ] && die "kube-apiserver not ready after 60 s; see ${STATE}/kube-apiserver.log"
        sleep 0.5
    done
    say "kube-apiserver ${K8S_VERSION} is ready on https://127.0.0.1:${API_PORT}"
}

cmd_up() {
    cmd_build
    local -a pkgs
    mapfile -t pkgs < <(deps_packages cluster)
    apt_install "${pkgs[@]}"
    mkdir -p "${STATE}"
    make_pki
    write_kubeconfig "${KUBECONFIG_FILE}" admin "$(sed -n 1p "${STATE}/pki/tokens.csv" | cut -d, -f1)"
    write_kubeconfig "${STATE}/kcm.kubeconfig" system:kube-controller-manager \
        "$(sed -n 2p "${STATE}/pki/tokens.csv" | cut -d, -f1)"

    start_bg etcd /usr/bin/etcd --name kvmfleet --data-dir "${STATE}/etcd" \
        --listen-client-urls "http://127.0.0.1:${ETCD_PORT}" \
        --advertise-client-urls "http://127.0.0.1:${ETCD_PORT}" \
        --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
        --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
        --initial-cluster "kvmfleet=http://127.0.0.1:${ETCD_PEER_PORT}" \
        --quota-backend-bytes 2147483648
    local i
    for i in $(seq 1 60); do
        curl -fsS --max-time 2 "http://127.0.0.1:${ETCD_PORT}/health" >/dev/null 2>&1 && break
        [ "${i}" -eq 60 ] && die "etcd did not become healthy; see ${STATE}/etcd.log"
        sleep 0.5
    done

    start_apiserver

    start_bg kube-controller-manager "${BIN_DIR}/kube-controller-manager" \
        --kubeconfig "${STATE}/kcm.kubeconfig" \
        --authentication-kubeconfig "${STATE}/kcm.kubeconfig" \
        --authorization-kubeconfig "${STATE}/kcm.kubeconfig" \
        --bind-address 127.0.0.1 --secure-port "${KCM_PORT}" --port 0 \
        --service-account-private-key-file "${STATE}/pki/sa.key" \
        --root-ca-file "${STATE}/pki/ca.crt" \
        --use-service-account-credentials=true \
        --leader-elect=false \
        --controllers '*' \
        --v=1
    say "kubeconfig: ${KUBECONFIG_FILE}"
    say "try: eval \"\$(hack/cluster.sh env)\" && kubectl get --raw /readyz"
}

stop_one() {
    local name="$1" pid i
    if pid_alive "${name}"; then
        pid="$(cat "${STATE}/${name}.pid")"
        kill "${pid}" 2>/dev/null || true
        for i in $(seq 1 40); do
            pid_alive "${name}" || break
            sleep 0.25
        done
        pid_alive "${name}" && kill -9 "${pid}" 2>/dev/null || true
        say "stopped ${name} (pid ${pid})"
    fi
    rm -f "${STATE}/${name}.pid"
}

cmd_down() {
    [ -d "${STATE}" ] || { say "nothing to stop"; return 0; }
    stop_one kube-controller-manager
    stop_one kube-apiserver
    stop_one etcd
    rm -rf "${STATE}"
    say "control plane stopped and its state removed"
}

cmd_status() {
    local name rc=0
    for name in etcd kube-apiserver kube-controller-manager; do
        if pid_alive "${name}"; then
            printf '%-24s running (pid %s)\n' "${name}" "$(cat "${STATE}/${name}.pid")"
        else
            printf '%-24s stopped\n' "${name}"; rc=1
        fi
    done
    if [ -f "${STATE}/pki/tokens.csv" ] && api_ready; then
        printf '%-24s ready (https://127.0.0.1:%s, kubeconfig %s)\n' "readyz" "${API_PORT}" "${KUBECONFIG_FILE}"
    else
        printf '%-24s not ready\n' "readyz"; rc=1
    fi
    return "${rc}"
}

cmd_env() {
    printf 'export KUBECONFIG=%q\n' "${KUBECONFIG_FILE}"
    printf 'export PATH=%q:"$PATH"\n' "${BIN_DIR}"
}

case "${1:-}" in
    build) cmd_build ;;
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    restart-apiserver) stop_one kube-apiserver; start_apiserver ;;
    *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
