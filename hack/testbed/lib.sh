# shellcheck shell=bash
# Shared helpers of hack/testbed.sh: constants, logging, state paths, namespace and
# process bookkeeping. Sourced by hack/testbed.sh; never executed on its own.

# ---------------------------------------------------------------- constants
# KVMFLEET_INSTANCE (0-9, default 0) lets several testbeds run side by side on one
# machine: instance N uses the network 10.77.N.0/24 and its own link names, MACs and
# holder tags (instance 0 keeps the plain names). Give each its own KVMFLEET_RUN_DIR.
TB_INSTANCE="${KVMFLEET_INSTANCE:-0}"
[[ "${TB_INSTANCE}" =~ ^[0-9]$ ]] || { printf 'error: KVMFLEET_INSTANCE must be 0-9, not %q\n' "${TB_INSTANCE}" >&2; exit 1; }
readonly TB_INSTANCE
if (( TB_INSTANCE == 0 )); then TB_LINK_PREFIX=kvmf; else TB_LINK_PREFIX="kvmf${TB_INSTANCE}"; fi
readonly TB_LINK_PREFIX
readonly TB_BRIDGE="${TB_LINK_PREFIX}-mgmt"
readonly TB_NET="10.77.${TB_INSTANCE}"
readonly TB_GATEWAY="${TB_NET}.1"
readonly TB_MN=kvmf-mn               # the management namespace's name for `exec` and status
readonly TB_MN_ADDR="${TB_NET}.2"
readonly TB_HOST_OFFSET=10           # kvmhostN has 10.77.0.(10+N)
readonly TB_MAX_HOSTS=50
readonly TB_HTTP_PORT=8088
readonly TB_NFS_EXPORT=/srv/vms      # export path (NFSv3 mount path and NFSv4 pseudo path)
readonly TB_DHCP_FIRST="${TB_NET}.100"
readonly TB_DHCP_LAST="${TB_NET}.199"
readonly TB_SSH_PORT=22
readonly TB_SSH_USER=root
readonly TB_DAEMON_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
readonly TB_HOLDER_BASE=kvmfleet-testbed-holder         # holders of every instance start so
readonly TB_HOLDER_PREFIX="${TB_HOLDER_BASE}${TB_INSTANCE#0}"

# Paths. TB_REPO comes from the location of hack/testbed.sh, so any clone works.
: "${TB_REPO:?TB_REPO must be set by hack/testbed.sh}"
TB_LIBDIR="${TB_REPO}/hack/testbed"
TB_RUN="${KVMFLEET_RUN_DIR:-${TB_REPO}/.run}"
TB="${TB_RUN}/testbed"
TB_STATE="${TB}/state.env"           # what `up` was asked for (hosts, kvm hosts)
TB_PIDS="${TB}/pids"                 # holder pid files, one per namespace
TB_IDENTITY="${TB}/identity"         # test key, host keys, host UUIDs (kept by `down`)
TB_NFS_DIR="${TB}/nfs/vms"           # the exported directory (kept by `down`)
TB_MN_DIR="${TB}/mn"
TB_HOSTS_DIR="${TB}/hosts"
TB_ETC="${TB}/etc"
TB_LOGS="${TB}/logs"
TB_KEY="${TB_IDENTITY}/id_ed25519"
TB_KNOWN_HOSTS="${TB}/known_hosts"
TB_SSH_WRAPPER="${TB}/bin/ssh"
TB_HOSTS_JSON="${TB}/hosts.json"
TB_CACHE="${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/kvmfleet"

# ---------------------------------------------------------------- logging
if [[ -t 2 ]]; then
    _c_step=$'\e[1;34m' _c_ok=$'\e[32m' _c_warn=$'\e[33m' _c_err=$'\e[1;31m' _c_off=$'\e[0m'
else
    _c_step='' _c_ok='' _c_warn='' _c_err='' _c_off=''
fi
step() { printf '%s==>%s %s\n' "${_c_step}" "${_c_off}" "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
ok()   { printf '    %sok%s  %s\n' "${_c_ok}" "${_c_off}" "$*" >&2; }
warn() { printf '%swarning:%s %s\n' "${_c_warn}" "${_c_off}" "$*" >&2; }
die()  { printf '%serror:%s %s\n' "${_c_err}" "${_c_off}" "$*" >&2; exit 1; }

# ---------------------------------------------------------------- small utilities
now_s() { date +%s; }

# wait_until SECONDS DESCRIPTION CMD... : poll CMD every 0.2 s until it succeeds.
wait_until() {
    local limit="$1" what="$2"
    shift 2
    local deadline=$(( $(now_s) + limit ))
    until "$@"; do
        if (( $(now_s) >= deadline )); then
            warn "timed out after ${limit}s waiting for ${what}"
            return 1
        fi
        sleep 0.2
    done
}

# tcp_open ADDR PORT : true if something accepts a TCP connection (1 s timeout).
# Only ever called with testbed addresses (10.77.N.0/24).
tcp_open() {
    # shellcheck disable=SC2016  # $0 and $1 belong to the inner bash
    timeout 1 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# render TEMPLATE OUTPUT KEY=VALUE... : replace @KEY@ placeholders; fail on leftovers.
render() {
    local tpl="$1" out="$2"
    shift 2
    python3 - "${tpl}" "${out}" "$@" <<'PY'
import re, sys
tpl, out, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
text = open(tpl, encoding="utf-8").read()
for pair in pairs:
    key, _, value = pair.partition("=")
    text = text.replace("@" + key + "@", value)
left = sorted(set(re.findall(r"@[A-Z][A-Z0-9_]*@", text)))
if left:
    sys.exit("render %s: unreplaced placeholders %s" % (tpl, ", ".join(left)))
with open(out, "w", encoding="utf-8") as fh:
    fh.write(text)
PY
}

# write_in_place FILE : replace FILE's content from stdin keeping its inode, so that
# bind mounts of FILE inside the namespaces see the new content.
write_in_place() {
    local tmp
    tmp="$(mktemp)"
    cat >"${tmp}"
    if [[ -f "$1" ]]; then
        cat "${tmp}" >"$1"
    else
        install -m 0644 "${tmp}" "$1"
    fi
    rm -f "${tmp}"
}

host_name() { printf 'kvmhost%s' "$1"; }
host_addr() { printf '%s.%s' "${TB_NET}" "$(( TB_HOST_OFFSET + $1 ))"; }
host_veth() { printf '%s-kvmhost%s' "${TB_LINK_PREFIX}" "$1"; }   # root-side end on the bridge
host_mac()  { printf '02:77:%02x:00:00:%02x' "${TB_INSTANCE}" "$(( TB_HOST_OFFSET + $1 ))"; }
readonly TB_MN_VETH="${TB_LINK_PREFIX}-mn"
readonly TB_MN_MAC="02:77:0${TB_INSTANCE}:00:00:02"
readonly TB_BRIDGE_MAC="02:77:0${TB_INSTANCE}:00:00:01"

# host_index NAME : kvmhost3 -> 3 (fails for anything else)
host_index() {
    [[ "$1" =~ ^kvmhost([1-9][0-9]?)$ ]] || return 1
    printf '%s' "${BASH_REMATCH[1]}"
}

# ---------------------------------------------------------------- state file
# state.env holds two lines: TB_HOSTS=<n> and TB_KVM_HOSTS=<comma list>.
state_read() {
    STATE_HOSTS=0 STATE_KVM_HOSTS='' STATE_LIGHT=0
    [[ -f "${TB_STATE}" ]] || return 1
    local key value
    while IFS='=' read -r key value; do
        case "${key}" in
            TB_HOSTS) [[ "${value}" =~ ^[0-9]+$ ]] && STATE_HOSTS="${value}" ;;
            TB_KVM_HOSTS) [[ "${value}" =~ ^[0-9,]*$ ]] && STATE_KVM_HOSTS="${value}" ;;
            TB_LIGHT) [[ "${value}" == 1 ]] && STATE_LIGHT=1 ;;
        esac
    done <"${TB_STATE}"
    return 0 # not the status of the last test above (TB_LIGHT=0 is a full testbed)
}

state_write() {
    mkdir -p "${TB}"
    printf 'TB_HOSTS=%s\nTB_KVM_HOSTS=%s\nTB_LIGHT=%s\n' "$1" "$2" "${3:-0}" >"${TB_STATE}.tmp"
    mv -f "${TB_STATE}.tmp" "${TB_STATE}"
}

# in_list ITEM COMMA_LIST
in_list() {
    local item="$1" list=",$2,"
    [[ "${list}" == *",${item},"* ]]
}

# ---------------------------------------------------------------- namespaces and processes
holder_tag() { printf '%s:%s:%s' "${TB_HOLDER_PREFIX}" "$1" "${TB}"; }

# argv0 PID : first NUL-separated field of /proc/PID/cmdline.
argv0() {
    local a0=''
    [[ -r "/proc/$1/cmdline" ]] || return 1
    IFS= read -r -d '' a0 <"/proc/$1/cmdline" || [[ -n "${a0}" ]] || return 1
    printf '%s' "${a0}"
}

netns_of() { readlink "/proc/$1/ns/net" 2>/dev/null; }
mntns_of() { readlink "/proc/$1/ns/mnt" 2>/dev/null; }

# holder_pid NAME : print the pid of NAME's namespace holder if it is alive and really
# ours (argv0 is our tag, and it lives in a network namespace other than ours).
holder_pid() {
    local file="${TB_PIDS}/$1.pid" pid
    [[ -f "${file}" ]] || return 1
    pid="$(<"${file}")"
    [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
    [[ "$(argv0 "${pid}" 2>/dev/null)" == "$(holder_tag "$1")" ]] || return 1
    [[ "$(netns_of "${pid}")" != "$(netns_of "$$")" ]] || return 1
    printf '%s' "${pid}"
}

# start_holder NAME : create mount+net+uts namespaces held by a sleeping process.
start_holder() {
    local name="$1" tag pidfile pid
    tag="$(holder_tag "${name}")"
    pidfile="${TB_PIDS}/${name}.pid"
    mkdir -p "${TB_PIDS}"
    rm -f "${pidfile}" "${pidfile}.new"
    # shellcheck disable=SC2016  # $$ and $1 are expanded by the inner bash
    setsid unshare --mount --net --uts --propagation private -- \
        bash -c 'echo "$$" >"$1.new" && mv -f "$1.new" "$1" && exec -a "$2" sleep infinity' \
        kvmfleet-holder "${pidfile}" "${tag}" </dev/null >/dev/null 2>&1 9>&- &
    wait_until 10 "the ${name} namespace holder" test -s "${pidfile}" || return 1
    wait_until 5 "the ${name} holder to exec" holder_pid "${name}" >/dev/null || return 1
    pid="$(holder_pid "${name}")"
    hostname_in "${pid}" "${name}"
}

hostname_in() { nsenter -t "$1" -u -- hostname "$2"; }

# in_ns PID CMD... : run CMD inside the mount, network and UTS namespaces of PID.
in_ns() {
    local pid="$1"
    shift
    nsenter -t "${pid}" -m -u -n -- "$@"
}

# ns_daemon HOLDER NAME LOGFILE CMD... : start a foreground daemon inside HOLDER's
# namespaces with a clean environment, in its own session; its pid is written to
# /run/kvmfleet/NAME.pid inside the namespace (read back with daemon_pid).
ns_daemon() {
    local holder="$1" name="$2" log="$3"
    shift 3
    mkdir -p "$(dirname "${log}")"
    printf -- '--- %s starting %s: %s\n' "$(date -Is)" "${name}" "$*" >>"${log}"
    # shellcheck disable=SC2016  # expanded by the inner bash
    setsid nsenter -t "${holder}" -m -u -n -- \
        env -i PATH="${TB_DAEMON_PATH}" LANG=C.UTF-8 HOME=/root \
        bash -c 'mkdir -p /run/kvmfleet && echo "$$" >"/run/kvmfleet/$0.pid" && exec "$@"' \
        "${name}" "$@" </dev/null >>"${log}" 2>&1 9>&- &
}

# daemon_pid HOLDER NAME COMM : pid of daemon NAME if alive, in HOLDER's network
# namespace and named COMM (so a recycled pid is never mistaken for it).
daemon_pid() {
    local holder="$1" name="$2" comm="$3" file pid
    file="/proc/${holder}/root/run/kvmfleet/${name}.pid"
    [[ -r "${file}" ]] || return 1
    pid="$(<"${file}")"
    [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/${pid}/comm" && "$(<"/proc/${pid}/comm")" == "${comm}" ]] || return 1
    [[ "$(netns_of "${pid}")" == "$(netns_of "${holder}")" ]] || return 1
    printf '%s' "${pid}"
}

# stop_daemon HOLDER NAME COMM : SIGTERM, wait up to 10 s, then SIGKILL.
stop_daemon() {
    local pid
    pid="$(daemon_pid "$1" "$2" "$3")" || return 0
    kill -TERM "${pid}" 2>/dev/null || true
    wait_until 10 "$2 (pid ${pid}) to exit" pid_gone "${pid}" || kill -KILL "${pid}" 2>/dev/null || true
    rm -f "/proc/$1/root/run/kvmfleet/$2.pid" 2>/dev/null || true
}

pid_gone() { [[ ! -e "/proc/$1" ]]; }

# ns_members HOLDER : every other process living in HOLDER's network or mount namespace.
ns_members() {
    local holder="$1" net mnt self_net self_mnt p pid
    net="$(netns_of "${holder}")" mnt="$(mntns_of "${holder}")"
    self_net="$(netns_of "$$")" self_mnt="$(mntns_of "$$")"
    [[ -n "${net}" && -n "${mnt}" ]] || return 0
    # Never touch the namespaces we run in ourselves.
    [[ "${net}" != "${self_net}" && "${mnt}" != "${self_mnt}" ]] || return 0
    for p in /proc/[0-9]*; do
        pid="${p#/proc/}"
        [[ "${pid}" != "${holder}" && "${pid}" != "$$" ]] || continue
        if [[ "$(netns_of "${pid}")" == "${net}" || "$(mntns_of "${pid}")" == "${mnt}" ]]; then
            printf '%s\n' "${pid}"
        fi
    done
}

# stop_holder PID TAG : stop every process in the namespaces of holder PID (whose
# argv0 must be TAG), then the holder. Each pid is re-checked against the
# namespaces right before it is signalled.
stop_holder() {
    local holder="$1" tag="$2" net mnt pids pid sig deadline
    [[ "$(argv0 "${holder}" 2>/dev/null)" == "${tag}" ]] || return 0
    net="$(netns_of "${holder}")" mnt="$(mntns_of "${holder}")"
    for sig in TERM KILL; do
        mapfile -t pids < <(ns_members "${holder}")
        ((${#pids[@]})) || break
        for pid in "${pids[@]}"; do
            if [[ "$(netns_of "${pid}")" == "${net}" || "$(mntns_of "${pid}")" == "${mnt}" ]]; then
                kill "-${sig}" "${pid}" 2>/dev/null || true
            fi
        done
        [[ "${sig}" == KILL ]] && break
        deadline=$(( $(now_s) + 15 ))
        while (( $(now_s) < deadline )); do
            mapfile -t pids < <(ns_members "${holder}")
            ((${#pids[@]})) || break
            sleep 0.2
        done
    done
    if [[ "$(argv0 "${holder}" 2>/dev/null)" == "${tag}" ]]; then
        kill -TERM "${holder}" 2>/dev/null || true
        wait_until 5 "holder ${holder} to exit" pid_gone "${holder}" || kill -KILL "${holder}" 2>/dev/null || true
    fi
}

# stop_namespace NAME : stop NAME's namespaces (all their processes, then the holder).
stop_namespace() {
    local name="$1" holder
    if holder="$(holder_pid "${name}")"; then
        stop_holder "${holder}" "$(holder_tag "${name}")"
    fi
    rm -f "${TB_PIDS}/${name}.pid"
}

# sweep_orphans : processes left in testbed namespaces whose holder is gone (their
# mount namespace has the testbed's /run/kvmfleet/setup.done marker, and no live
# holder shares their network namespace).
sweep_orphans() {
    local p pid self_net net live a0 sig found
    self_net="$(netns_of "$$")"
    for sig in TERM KILL; do
        # Namespaces of any instance's live holder are not orphans (read again before
        # each pass: another instance may have started a testbed meanwhile).
        live=' '
        for p in /proc/[0-9]*; do
            pid="${p#/proc/}"
            a0="$(argv0 "${pid}" 2>/dev/null)" || continue
            [[ "${a0}" == "${TB_HOLDER_BASE}"[0-9]":"* || "${a0}" == "${TB_HOLDER_BASE}:"* ]] \
                && live+="$(netns_of "${pid}") "
        done
        found=0
        for p in /proc/[0-9]*; do
            pid="${p#/proc/}"
            net="$(netns_of "${pid}")" || continue
            [[ -n "${net}" && "${net}" != "${self_net}" && "${live}" != *" ${net} "* ]] || continue
            [[ -e "/proc/${pid}/root/run/kvmfleet/setup.done" ]] || continue
            [[ "$(mntns_of "${pid}")" != "$(mntns_of "$$")" ]] || continue
            if [[ "${sig}" == TERM ]]; then
                warn "stopping orphaned testbed process ${pid} ($(tr '\0' ' ' <"/proc/${pid}/cmdline" | cut -c1-80))"
            fi
            kill "-${sig}" "${pid}" 2>/dev/null || true
            found=1
        done
        ((found)) || break
        [[ "${sig}" == TERM ]] && sleep 2
    done
    return 0
}

# foreign_holders : holders of a testbed started from another run directory.
foreign_holders() {
    local p pid a0
    for p in /proc/[0-9]*; do
        pid="${p#/proc/}"
        a0="$(argv0 "${pid}" 2>/dev/null)" || continue
        [[ "${a0}" == "${TB_HOLDER_PREFIX}:"* ]] || continue
        [[ "${a0}" == *":${TB}" ]] && continue
        printf '%s %s\n' "${pid}" "${a0}"
    done
}

link_exists() { ip link show dev "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------- packages
# The Debian packages the testbed needs: the `testbed` rows of hack/lib/packages.tsv.
# shellcheck source=hack/lib/deps.sh
source "${TB_REPO}/hack/lib/deps.sh"
mapfile -t TB_PACKAGES < <(deps_packages testbed)
readonly -a TB_PACKAGES

pkg_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]
}

# apt_get ARGS... : apt-get that waits (bounded) while another apt/dpkg holds the lock.
apt_get() {
    local deadline=$(( $(now_s) + 900 )) out rc
    while :; do
        rc=0
        out="$(DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 -y "$@" 2>&1)" || rc=$?
        if (( rc == 0 )); then
            printf '%s\n' "${out}" >>"${TB_LOGS}/apt.log"
            return 0
        fi
        printf '%s\n' "${out}" >>"${TB_LOGS}/apt.log"
        if grep -E 'Could not get lock|Unable to acquire the dpkg|Unable to lock' <<<"${out}" >/dev/null \
            && (( $(now_s) < deadline )); then
            info "apt is busy (another apt-get is running, see /tmp/apt.log); waiting..."
            sleep 5
            continue
        fi
        printf '%s\n' "${out}" | tail -n 20 >&2
        return "${rc}"
    done
}

APT_UPDATED=0
apt_update_once() {
    ((APT_UPDATED)) && return 0
    info "apt-get update"
    apt_get update
    APT_UPDATED=1
}

ensure_packages() {
    local -a missing=()
    local p
    command -v dpkg-query >/dev/null || die "this script needs a Debian system (dpkg-query not found)"
    for p in "${TB_PACKAGES[@]}"; do
        pkg_installed "${p}" || missing+=("${p}")
    done
    if ((${#missing[@]} == 0)); then
        ok "packages already installed"
        return 0
    fi
    step "installing ${missing[*]}"
    apt_update_once
    apt_get install --no-install-recommends "${missing[@]}"
    ok "installed ${missing[*]}"
}

# ---------------------------------------------------------------- per-namespace /etc
# bind_etc HOLDER NAME : private /etc/hosts (every testbed name), /etc/resolv.conf (no
# DNS: nothing may leave 10.77.0.0/24, and lookups of unknown names fail at once) and
# /etc/hostname inside HOLDER's mount namespace.
bind_etc() {
    local holder="$1" name="$2" hn="${TB_ETC}/hostname.$2"
    printf '%s\n' "${name}" >"${hn}"
    in_ns "${holder}" mount --bind "${TB_ETC}/hosts" /etc/hosts
    in_ns "${holder}" mount --bind "${hn}" /etc/hostname
    in_ns "${holder}" mount --bind "${TB_ETC}/resolv.conf" /etc/resolv.conf \
        || warn "${name}: could not bind a private /etc/resolv.conf"
}

# write_etc N : the shared /etc/hosts and /etc/resolv.conf of the namespaces.
write_etc() {
    local n="$1" i
    mkdir -p "${TB_ETC}"
    {
        printf '# kvmfleet testbed hosts (written by hack/testbed.sh up)\n'
        printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n'
        printf '%s\tkvmf-gw\n' "${TB_GATEWAY}"
        printf '%s\t%s\n' "${TB_MN_ADDR}" "${TB_MN}"
        for ((i = 1; i <= n; i++)); do
            printf '%s\t%s\n' "$(host_addr "${i}")" "$(host_name "${i}")"
        done
    } | write_in_place "${TB_ETC}/hosts"
    printf '# kvmfleet testbed: no DNS server on the management network\noptions timeout:1 attempts:1\n' \
        | write_in_place "${TB_ETC}/resolv.conf"
}

declare -A STARTED_DAEMONS=()

# ensure_daemon HOLDER LABEL NAME COMM LOG CMD... : start NAME unless it is running.
ensure_daemon() {
    local holder="$1" label="$2" name="$3" comm="$4" log="$5" pid
    shift 5
    if pid="$(daemon_pid "${holder}" "${name}" "${comm}")"; then
        ok "${label}: ${name} already running (pid ${pid})"
        return 0
    fi
    info "${label}: starting ${name}"
    STARTED_DAEMONS["${label}/${name}"]=1
    ns_daemon "${holder}" "${name}" "${log}" "$@"
}

# wait_daemon HOLDER LABEL NAME COMM LOG SECONDS CHECK... : wait until NAME runs and
# CHECK succeeds; on failure show the tail of its log.
wait_daemon() {
    local holder="$1" label="$2" name="$3" comm="$4" log="$5" secs="$6"
    shift 6
    if wait_until "${secs}" "${label}: ${name}" _daemon_ready "${holder}" "${name}" "${comm}" "$@"; then
        if [[ -n "${STARTED_DAEMONS["${label}/${name}"]:-}" ]]; then
            ok "${label}: ${name} ready (pid $(daemon_pid "${holder}" "${name}" "${comm}"))"
        fi
        return 0
    fi
    warn "${label}: ${name} did not come up; last lines of ${log}:"
    tail -n 15 "${log}" >&2 || true
    return 1
}

_daemon_ready() {
    local holder="$1" name="$2" comm="$3"
    shift 3
    daemon_pid "${holder}" "${name}" "${comm}" >/dev/null && "$@"
}

# log_since_start_has LOG TEXT : TEXT appears after the last "--- ... starting" line.
log_since_start_has() {
    awk -v t="$2" '/^--- .* starting /{seen=0} index($0, t){seen=1} END{exit !seen}' "$1" 2>/dev/null
}
