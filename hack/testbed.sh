#!/usr/bin/env bash
# kvmfleet hypervisor testbed: real KVM/QEMU hosts (libvirtd, virtlogd, sshd), each in
# its own namespaces, on a management network with an NFS server and PXE provisioning.
# See docs/testbed.md.
set -euo pipefail

TB_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck source=hack/testbed/lib.sh
source "${TB_REPO}/hack/testbed/lib.sh"
# shellcheck source=hack/testbed/net.sh
source "${TB_LIBDIR}/net.sh"
# shellcheck source=hack/testbed/guest.sh
source "${TB_LIBDIR}/guest.sh"
# shellcheck source=hack/testbed/mn.sh
source "${TB_LIBDIR}/mn.sh"
# shellcheck source=hack/testbed/host.sh
source "${TB_LIBDIR}/host.sh"

usage() {
    cat <<EOF
usage: hack/testbed.sh COMMAND [ARGS]

  up [--hosts N] [--kvm-hosts LIST] [--light | --full]
                                      create or repair the testbed (default: 2 hosts,
                                      KVM hidden on all; LIST e.g. "2" or "1,3" keeps
                                      /dev/kvm usable on those hosts, "" none). Without
                                      options a testbed keeps its current shape.
                                      --light: the scale mode, e.g. --hosts 20 --light:
                                      no PXE (no DHCP, no HTTP), libvirtd with few
                                      worker threads per host (sized for 2 cores).
  down [--purge]                      stop and remove everything the testbed created
                                      (--purge also removes keys, UUIDs and NFS data)
  status                              one line per component; exit 1 if any is down,
                                      3 if nothing is running
  exec HOST [--] [CMD...]             run CMD (default: bash) inside HOST's namespaces
                                      (HOST: kvmhostN or ${TB_MN})
  sshd-stop HOST | sshd-start HOST    fault injection: stop/start a host's sshd
  link-down HOST | link-up HOST       fault injection: unplug/plug a host's network link
  libvirtd-kill HOST                  fault: SIGKILL the host's libvirtd (running guests stay)
  libvirtd-start HOST                 start it again and wait until it answers
  libvirtd-restart HOST               SIGTERM, then start and wait (a libvirtd upgrade)
  libvirtd-hang HOST | libvirtd-resume HOST
                                      fault: SIGSTOP / SIGCONT libvirtd (connections stay
                                      open, nothing answers: a hung daemon)
  nfs-stop | nfs-start                fault: stop / start the NFS server (nfs-ganesha)
  link-loss HOST PERCENT | link-clear HOST
                                      fault: drop PERCENT% of the host's packets, both ways
                                      (iptables statistic); link-clear removes it
  link-delay HOST MS | link-clear HOST
                                      fault: delay the host's packets (tc netem; exits 4
                                      when the kernel has no sch_netem)
  kvm-break HOST | kvm-repair HOST    fault: /dev/kvm on HOST becomes a device without a
                                      driver (QEMU of a KVM guest cannot start) / back
  pool-small HOST DIR MIB             a storage pool directory DIR that holds only MIB MiB
                                      (a tmpfs in the host's mount namespace)
  pool-fill HOST DIR | pool-drain HOST DIR
                                      fault: fill DIR's free space (a ballast file) / free it
  env                                 print shell variables describing the testbed

State: ${TB}
EOF
}

# ---------------------------------------------------------------- preconditions
require_root() {
    [[ "${EUID}" -eq 0 ]] || die "the testbed needs root (namespaces, bridges, mounts)"
}

check_run_dir() {
    [[ "${TB}" == /* ]] || die "the run directory must be absolute: ${TB}"
    [[ "${TB}" != *[[:space:]]* ]] \
        || die "the run directory contains white space (${TB}); set KVMFLEET_RUN_DIR to a path without"
    case "${TB}/" in
        /run/* | /var/run/* | /var/lib/libvirt/* | /var/cache/libvirt/* | /var/log/* | /etc/* | /srv/* | /sys/* | /proc/* | /dev/*)
            die "the run directory ${TB} is hidden inside the testbed namespaces; choose another KVMFLEET_RUN_DIR" ;;
    esac
}

# take_over : only one testbed per instance (KVMFLEET_INSTANCE: bridge, addresses) can
# run on a machine. A testbed of the same instance started from another run directory
# (an older clone, a previous CI run) is stopped, and processes orphaned by a dead
# holder are swept.
take_over() {
    local pid tag
    while read -r pid tag; do
        [[ -n "${pid}" ]] || continue
        warn "stopping a testbed started from another run directory: ${tag#"${TB_HOLDER_PREFIX}:"} (pid ${pid})"
        stop_holder "${pid}" "${tag}"
    done < <(foreign_holders)
    sweep_orphans
}

# lock : serialize commands that change the testbed (several engineers and test
# sessions share one machine). Daemons are started with the lock fd closed.
lock() {
    mkdir -p "${TB}"
    exec 9>"${TB}/.lock"
    if ! flock -n 9; then
        info "another hack/testbed.sh is changing the testbed; waiting for it"
        flock -w 900 9 || die "timed out waiting for the testbed lock (${TB}/.lock)"
    fi
}

# ---------------------------------------------------------------- identity and outputs
ensure_test_key() {
    mkdir -p "${TB_IDENTITY}"
    chmod 0700 "${TB_IDENTITY}"
    if [[ ! -s "${TB_KEY}" ]]; then
        rm -f "${TB_KEY}" "${TB_KEY}.pub"
        ssh-keygen -q -t ed25519 -N '' -C kvmfleet-testbed -f "${TB_KEY}"
        ok "generated the test key ${TB_KEY}"
    fi
    chmod 0600 "${TB_KEY}"
    cp -f "${TB_KEY}.pub" "${TB_IDENTITY}/authorized_keys"
}

host_key_line() { cut -d' ' -f1,2 "$(host_key_pub "$1")"; }

write_outputs() {
    local n="$1" kvm_list="$2" i name addr
    {
        for ((i = 1; i <= n; i++)); do
            printf '%s,%s %s\n' "$(host_name "${i}")" "$(host_addr "${i}")" "$(host_key_line "${i}")"
        done
    } | write_in_place "${TB_KNOWN_HOSTS}"
    mkdir -p "${TB}/bin"
    render "${TB_LIBDIR}/templates/ssh-wrapper.in" "${TB_SSH_WRAPPER}" \
        "KEY=${TB_KEY}" "KNOWN_HOSTS=${TB_KNOWN_HOSTS}" "SELF=${TB_SSH_WRAPPER}"
    chmod 0755 "${TB_SSH_WRAPPER}"
    local -a args=()
    for ((i = 1; i <= n; i++)); do
        name="$(host_name "${i}")" addr="$(host_addr "${i}")"
        args+=("${name}" "${addr}" "$(host_virt_of "${i}")" "$(host_key_line "${i}")" "$(<"$(host_uuid_file "${i}")")")
    done
    python3 - "${TB_HOSTS_JSON}" "${TB}" "${TB_KEY}" "${TB_KNOWN_HOSTS}" "${TB_SSH_WRAPPER}" \
        "${TB_SSH_PORT}" "${TB_SSH_USER}" "${TB_MN_ADDR}" "${TB_NFS_EXPORT}" "${TB_NFS_DIR}" \
        "$(mn_http_url)" "${TB_MN_DIR}" "${TB_BRIDGE}" "${TB_GATEWAY}" "${QEMU_USER}" "${args[@]}" <<'PY'
import json, os, sys
(out, run, key, known, wrapper, port, user, mn, export, export_dir, http, mn_dir, bridge, gw,
 qemu_user) = sys.argv[1:16]
rest = sys.argv[16:]
hosts = []
for k in range(0, len(rest), 5):
    name, addr, virt, host_key, uuid = rest[k:k + 5]
    hosts.append({
        "name": name,
        "address": addr,
        "port": int(port),
        "user": user,
        "privateKeyPath": key,
        "hostKey": host_key,
        "virtualization": virt,
        "hostUUID": uuid,
        "libvirtURI": "qemu+ssh://%s@%s/system?keyfile=%s&command=%s" % (user, addr, key, wrapper),
    })
doc = {
    "hosts": hosts,
    "nfs": {"server": mn, "export": export, "directory": export_dir,
            "url": "nfs://%s%s" % (mn, export)},
    "pxe": {"httpUrl": http, "bootScript": http + "/boot.ipxe",
            "kernelUrl": http + "/vmlinuz", "initrdUrl": http + "/initrd.gz",
            "dhcpRange": [mn.rsplit(".", 1)[0] + ".100", mn.rsplit(".", 1)[0] + ".199"],
            "dhcpHostsDir": os.path.join(mn_dir, "dhcp-hosts.d"),
            "leasesFile": os.path.join(mn_dir, "dnsmasq.leases")},
    "mgmtBridge": bridge,
    "gateway": gw,
    "managementAddress": mn,
    "knownHostsPath": known,
    "sshCommand": wrapper,
    "qemuUser": qemu_user,
    "runDir": run,
}
tmp = out + ".tmp"
with open(tmp, "w", encoding="utf-8") as fh:
    json.dump(doc, fh, indent=2)
    fh.write("\n")
os.replace(tmp, out)
PY
}

print_summary() {
    local n="$1" secs="$2" i
    printf '\nkvmfleet testbed is up (%ss)\n' "${secs}"
    printf '  management bridge  %s %s/24 (root namespace)\n' "${TB_BRIDGE}" "${TB_GATEWAY}"
    printf '  NFS                nfs://%s%s  (files in %s)\n' "${TB_MN_ADDR}" "${TB_NFS_EXPORT}" "${TB_NFS_DIR}"
    printf '  PXE                DHCP %s-%s, iPXE script %s/boot.ipxe\n' "${TB_DHCP_FIRST}" "${TB_DHCP_LAST}" "$(mn_http_url)"
    printf '  known_hosts        %s\n' "${TB_KNOWN_HOSTS}"
    printf '  ssh for libvirt    %s (qemu+ssh://...?keyfile=KEY&command=THIS)\n' "${TB_SSH_WRAPPER}"
    printf '  hosts.json         %s\n\n' "${TB_HOSTS_JSON}"
    printf '%-10s %-12s %-5s %-5s %-9s %s\n' NAME ADDRESS PORT USER VIRT PRIVATE-KEY
    for ((i = 1; i <= n; i++)); do
        printf '%-10s %-12s %-5s %-5s %-9s %s\n' "$(host_name "${i}")" "$(host_addr "${i}")" \
            "${TB_SSH_PORT}" "${TB_SSH_USER}" "$(host_virt_of "${i}")" "${TB_KEY}"
        printf '  hostKey: %s\n' "$(host_key_line "${i}")"
    done
}

# ---------------------------------------------------------------- commands
cmd_up() {
    local n=2 kvm_list='' i t0 light=0
    # Without arguments a running testbed keeps its shape (state.env).
    if state_read && ((STATE_HOSTS > 0)); then
        n="${STATE_HOSTS}" kvm_list="${STATE_KVM_HOSTS}" light="${STATE_LIGHT}"
    fi
    while (($#)); do
        case "$1" in
            --hosts) n="${2:-}"; shift 2 || die "--hosts needs a number" ;;
            --hosts=*) n="${1#--hosts=}"; shift ;;
            --kvm-hosts) kvm_list="${2:-}"; shift 2 || die "--kvm-hosts needs a list" ;;
            --kvm-hosts=*) kvm_list="${1#--kvm-hosts=}"; shift ;;
            --light) light=1; shift ;;
            --full) light=0; shift ;;
            -h | --help) usage; return 0 ;;
            *) die "up: unknown argument $1" ;;
        esac
    done
    if ! [[ "${n}" =~ ^[1-9][0-9]*$ ]] || ((n > TB_MAX_HOSTS)); then
        die "--hosts must be 1..${TB_MAX_HOSTS}"
    fi
    [[ "${kvm_list}" =~ ^([0-9]+(,[0-9]+)*)?$ ]] || die "--kvm-hosts must be a comma list of host numbers"
    require_root
    check_run_dir
    t0="${EPOCHREALTIME}"
    lock
    take_over
    mkdir -p "${TB_LOGS}" "${TB_PIDS}"
    umask 022

    step "packages"
    ensure_packages
    step "identity (${TB_IDENTITY})"
    ensure_test_key
    for ((i = 1; i <= n; i++)); do host_identity "${i}"; done
    ok "test key and ${n} host keys"
    step "guest kernel and initramfs (${TB_CACHE}/guest)"
    guest_artifacts

    # Hosts beyond N (from an earlier `up --hosts` with more) go away.
    local f idx
    for f in "${TB_PIDS}"/kvmhost*.pid; do
        [[ -e "${f}" ]] || continue
        idx="$(host_index "$(basename "${f}" .pid)")" || continue
        if ((idx > n)); then
            step "removing $(host_name "${idx}") (asked for ${n} hosts)"
            host_remove "${idx}"
        fi
    done
    state_write "${n}" "${kvm_list}" "${light}"
    TB_LIGHT="${light}"
    write_etc "${n}"

    step "management network"
    bridge_up
    step "management namespace ${TB_MN} (${TB_MN_ADDR}): NFS, DHCP, HTTP"
    mn_files
    mn_namespace
    mn_daemons || die "the management services did not start (logs: ${TB_MN_DIR}/log)"

    step "hypervisor hosts"
    for ((i = 1; i <= n; i++)); do
        if in_list "${i}" "${kvm_list}"; then host_namespace "${i}" yes; else host_namespace "${i}" no; fi
    done
    for ((i = 1; i <= n; i++)); do host_start_daemons "${i}"; done
    local failed=0
    for ((i = 1; i <= n; i++)); do host_wait_daemons "${i}" || failed=1; done
    ((failed == 0)) || die "some hosts did not come up (logs: ${TB_HOSTS_DIR}/<host>/log)"

    write_outputs "${n}" "${kvm_list}"
    print_summary "${n}" "$(awk -v a="${t0}" -v b="${EPOCHREALTIME}" 'BEGIN { printf "%.1f", b - a }')"
}

cmd_down() {
    local purge=0 f name pid a0
    while (($#)); do
        case "$1" in
            --purge) purge=1; shift ;;
            *) die "down: unknown argument $1" ;;
        esac
    done
    require_root
    check_run_dir
    if [[ ! -d "${TB}" ]]; then
        ok "nothing to do (no ${TB})"
        return 0
    fi
    lock
    # Holders whose pid file was lost are found by their tag.
    mkdir -p "${TB_PIDS}"
    for f in /proc/[0-9]*; do
        pid="${f#/proc/}"
        a0="$(argv0 "${pid}" 2>/dev/null)" || continue
        [[ "${a0}" == "${TB_HOLDER_PREFIX}:"*":${TB}" ]] || continue
        name="${a0#"${TB_HOLDER_PREFIX}:"}"
        name="${name%":${TB}"}"
        [[ "${name}" == "${TB_MN}" ]] || host_index "${name}" >/dev/null || continue
        [[ -s "${TB_PIDS}/${name}.pid" ]] || printf '%s\n' "${pid}" >"${TB_PIDS}/${name}.pid"
    done
    step "stopping hosts"
    for f in "${TB_PIDS}"/kvmhost*.pid; do
        [[ -e "${f}" ]] || continue
        name="$(basename "${f}" .pid)"
        stop_namespace "${name}"
        ok "${name} stopped"
    done
    step "stopping the management namespace"
    stop_namespace "${TB_MN}"
    ok "${TB_MN} stopped"
    step "removing links"
    if [[ -n "$(foreign_holders)" ]]; then
        warn "a testbed of another run directory is running: its links and ${TB_BRIDGE} are left alone"
    else
        local link
        for link in "/sys/class/net/${TB_LINK_PREFIX}-kvmhost"* "/sys/class/net/${TB_MN_VETH}"; do
            [[ -e "${link}" ]] || continue
            ip link del "${link##*/}" 2>/dev/null || true
        done
        bridge_down
    fi
    step "removing files"
    rm -rf "${TB_PIDS}" "${TB_HOSTS_DIR}" "${TB_MN_DIR}" "${TB_ETC}" "${TB:?}/bin" "${TB_LOGS}" \
        "${TB_KNOWN_HOSTS}" "${TB_HOSTS_JSON}" "${TB_STATE}"
    if ((purge)); then
        rm -rf "${TB}"
        ok "removed ${TB} (keys, host UUIDs, NFS data)"
    else
        ok "runtime files removed; kept ${TB_IDENTITY} and ${TB_NFS_DIR} (--purge removes them)"
    fi
    printf 'kvmfleet testbed is down\n'
}

# status_line COMPONENT STATE DETAIL
status_line() { printf '%-22s %-5s %s\n' "$1" "$2" "$3"; }

# status exit codes: 0 everything up, 1 something down, 3 nothing running at all.
cmd_status() {
    local bad=0 h i n name addr
    if ! state_read; then
        status_line testbed down "not set up (no ${TB_STATE})"
        return 3
    fi
    if ! _any_holder_alive "${STATE_HOSTS}"; then
        status_line testbed down "not running (state in ${TB}, but no namespace is alive)"
        return 3
    fi
    n="${STATE_HOSTS}"
    if link_is_up "${TB_BRIDGE}" && ip -4 -o addr show dev "${TB_BRIDGE}" | grep -F " ${TB_GATEWAY}/24 " >/dev/null; then
        status_line "${TB_BRIDGE}" up "bridge ${TB_GATEWAY}/24"
    else
        status_line "${TB_BRIDGE}" down "bridge missing, down or without ${TB_GATEWAY}/24"; bad=1
    fi
    if h="$(holder_pid "${TB_MN}")"; then
        if link_is_up "${TB_MN_VETH}"; then
            status_line "${TB_MN}" up "namespaces (holder pid ${h}), eth0 ${TB_MN_ADDR}"
        else
            status_line "${TB_MN}" down "link ${TB_MN_VETH} is down"; bad=1
        fi
        _status_daemon "${h}" "${TB_MN}" rpcbind rpcbind "portmapper" _rpcbind_ready "${h}" || bad=1
        _status_daemon "${h}" "${TB_MN}" nfs-ganesha ganesha.nfsd \
            "nfs://${TB_MN_ADDR}${TB_NFS_EXPORT} (NFSv3+v4, ${TB_NFS_DIR})" _nfs_ready "${h}" || bad=1
        ((STATE_LIGHT)) || _status_daemon "${h}" "${TB_MN}" dnsmasq dnsmasq \
            "DHCP ${TB_DHCP_FIRST}-${TB_DHCP_LAST}, iPXE -> $(mn_http_url)/boot.ipxe" true || bad=1
        ((STATE_LIGHT)) || _status_daemon "${h}" "${TB_MN}" http python3 "$(mn_http_url)/" \
            tcp_open "${TB_MN_ADDR}" "${TB_HTTP_PORT}" || bad=1
    else
        status_line "${TB_MN}" down "namespace holder not running"; bad=1
    fi
    for ((i = 1; i <= n; i++)); do
        name="$(host_name "${i}")" addr="$(host_addr "${i}")"
        if ! h="$(holder_pid "${name}")"; then
            status_line "${name}" down "namespace holder not running"; bad=1
            continue
        fi
        if link_is_up "$(host_veth "${i}")"; then
            status_line "${name}" up "namespaces (holder pid ${h}), ${addr}, $(host_virt_of "${i}")"
        else
            status_line "${name}" down "link $(host_veth "${i}") is down (link-down?)"; bad=1
        fi
        _status_daemon "${h}" "${name}" virtlogd virtlogd "" true || bad=1
        _status_daemon "${h}" "${name}" libvirtd libvirtd "host UUID $(<"$(host_uuid_file "${i}")")" \
            _libvirtd_ready "${h}" || bad=1
        _status_daemon "${h}" "${name}" sshd sshd "${addr}:${TB_SSH_PORT}" \
            tcp_open "${addr}" "${TB_SSH_PORT}" || bad=1
    done
    return "${bad}"
}

_any_holder_alive() {
    local i
    holder_pid "${TB_MN}" >/dev/null && return 0
    for ((i = 1; i <= $1; i++)); do
        holder_pid "$(host_name "${i}")" >/dev/null && return 0
    done
    return 1
}

# _status_daemon HOLDER NS NAME COMM DETAIL CHECK...
_status_daemon() {
    local holder="$1" ns="$2" name="$3" comm="$4" detail="$5" pid
    shift 5
    if ! pid="$(daemon_pid "${holder}" "${name}" "${comm}")"; then
        status_line "${ns}/${name}" down "not running"
        return 1
    fi
    if ! "$@"; then
        status_line "${ns}/${name}" down "pid ${pid} does not answer${detail:+ (${detail})}"
        return 1
    fi
    status_line "${ns}/${name}" up "pid ${pid}${detail:+, ${detail}}"
}

# resolve_ns HOST : prints the holder pid for kvmhostN or kvmf-mn.
resolve_ns() {
    local host="${1:-}"
    [[ -n "${host}" ]] || die "missing HOST (kvmhostN or ${TB_MN})"
    [[ "${host}" == mn ]] && host="${TB_MN}"
    if [[ "${host}" != "${TB_MN}" ]]; then
        host_index "${host}" >/dev/null || die "unknown host ${host} (kvmhostN or ${TB_MN})"
    fi
    holder_pid "${host}" || die "${host} is not running (hack/testbed.sh up)"
}

# ---------------------------------------------------------------- fault injection
# Each fault names what it did on stdout (ok ...) and is undone by its pair; all of them
# are idempotent, so a test may undo a fault that is already gone.

cmd_libvirtd() {
    local action="$1" host="${2:-}" i holder pid name log
    require_root
    i="$(host_index "${host}")" || die "libvirtd-${action}: HOST must be kvmhostN"
    holder="$(resolve_ns "${host}")"
    name="$(host_name "${i}")" log="$(host_dir "${i}")/log"
    pid="$(daemon_pid "${holder}" libvirtd libvirtd)" || pid=''
    case "${action}" in
        kill)
            [[ -n "${pid}" ]] && kill -KILL "${pid}" 2>/dev/null || true
            [[ -z "${pid}" ]] || wait_until 10 "libvirtd (pid ${pid}) to die" pid_gone "${pid}" || true
            ok "${name}: libvirtd killed${pid:+ (pid ${pid})}; running guests stay" ;;
        hang)
            [[ -n "${pid}" ]] || die "${name}: libvirtd is not running"
            kill -STOP "${pid}"
            ok "${name}: libvirtd (pid ${pid}) stopped with SIGSTOP (hung)" ;;
        resume)
            [[ -z "${pid}" ]] || kill -CONT "${pid}" 2>/dev/null || true
            ok "${name}: libvirtd resumed${pid:+ (pid ${pid})}" ;;
        start | restart)
            lock
            if [[ "${action}" == restart && -n "${pid}" ]]; then
                kill -CONT "${pid}" 2>/dev/null || true
                stop_daemon "${holder}" libvirtd libvirtd
            fi
            ensure_daemon "${holder}" "${name}" libvirtd libvirtd "${log}/libvirtd.log" libvirtd
            wait_daemon "${holder}" "${name}" libvirtd libvirtd "${log}/libvirtd.log" 90 \
                _libvirtd_ready "${holder}" || die "${name}: libvirtd did not come back"
            ok "${name}: libvirtd answers (pid $(daemon_pid "${holder}" libvirtd libvirtd))" ;;
    esac
}

cmd_nfs() {
    local action="$1" h log="${TB_MN_DIR}/log"
    require_root
    h="$(holder_pid "${TB_MN}")" || die "namespace ${TB_MN} is not running"
    lock
    if [[ "${action}" == stop ]]; then
        stop_daemon "${h}" nfs-ganesha ganesha.nfsd
        ok "${TB_MN}: NFS server stopped (clients' hard mounts hang until it is back)"
        return 0
    fi
    ensure_daemon "${h}" "${TB_MN}" nfs-ganesha ganesha.nfsd "${log}/ganesha.out" \
        ganesha.nfsd -F -f "${TB_MN_DIR}/ganesha.conf" -L "${log}/ganesha.log" \
        -p /run/ganesha/ganesha.pid -N NIV_EVENT
    wait_daemon "${h}" "${TB_MN}" nfs-ganesha ganesha.nfsd "${log}/ganesha.log" 60 \
        _nfs_ready "${h}" || die "${TB_MN}: the NFS server did not come back"
    ok "${TB_MN}: NFS server answers"
}

# Packet loss: iptables rules tagged with this comment in the host's network namespace
# (the root namespace is never touched); delay: a netem qdisc on the host's eth0 and on
# its root-side veth.
readonly TB_FAULT_TAG=kvmfleet-fault

cmd_link_fault() {
    local action="$1" host="${2:-}" value="${3:-}" i holder veth probability
    require_root
    i="$(host_index "${host}")" || die "link-${action}: HOST must be kvmhostN"
    holder="$(resolve_ns "${host}")"
    veth="$(host_veth "${i}")"
    case "${action}" in
        loss)
            [[ "${value}" =~ ^[0-9]+$ && "${value}" -ge 1 && "${value}" -le 100 ]] \
                || die "link-loss: PERCENT must be 1..100"
            _link_clear "${holder}" "${veth}"
            probability="$(awk -v p="${value}" 'BEGIN { printf "%.2f", p / 100 }')"
            in_ns "${holder}" iptables -w -A INPUT -i eth0 -m statistic --mode random \
                --probability "${probability}" -m comment --comment "${TB_FAULT_TAG}" -j DROP
            in_ns "${holder}" iptables -w -A OUTPUT -o eth0 -m statistic --mode random \
                --probability "${probability}" -m comment --comment "${TB_FAULT_TAG}" -j DROP
            ok "${host}: ${value}% of packets dropped each way" ;;
        delay)
            [[ "${value}" =~ ^[0-9]+$ ]] || die "link-delay: MS must be a number"
            _link_clear "${holder}" "${veth}"
            if ! in_ns "${holder}" tc qdisc add dev eth0 root netem delay "${value}ms" 2>/dev/null; then
                warn "${host}: the kernel has no netem qdisc (sch_netem): link-delay is not available here"
                exit 4
            fi
            tc qdisc add dev "${veth}" root netem delay "${value}ms"
            ok "${host}: ${value} ms added each way" ;;
        clear)
            _link_clear "${holder}" "${veth}"
            ok "${host}: link faults cleared" ;;
    esac
}

_link_clear() {
    local holder="$1" veth="$2" rule
    in_ns "${holder}" tc qdisc del dev eth0 root 2>/dev/null || true
    tc qdisc del dev "${veth}" root 2>/dev/null || true
    while rule="$(in_ns "${holder}" iptables -w -S 2>/dev/null | grep -m1 -- "${TB_FAULT_TAG}")"; do
        # shellcheck disable=SC2086  # the rule's words, as iptables printed them
        in_ns "${holder}" iptables -w ${rule/-A /-D } || break
    done
}

# kvm-break stacks a driverless mode-000 node over /dev/kvm in the host's mount namespace
# (as a host with KVM hidden has it); kvm-repair removes exactly that mount.
cmd_kvm() {
    local action="$1" host="${2:-}" holder marker=/run/kvmfleet/kvm-broken
    require_root
    host_index "${host}" >/dev/null || die "kvm-${action}: HOST must be kvmhostN"
    holder="$(resolve_ns "${host}")"
    if [[ "${action}" == break ]]; then
        if ! in_ns "${holder}" test -e "${marker}"; then
            in_ns "${holder}" mknod -m 0000 "${marker}" c 0 0
            in_ns "${holder}" mount --bind "${marker}" /dev/kvm
        fi
        ok "${host}: /dev/kvm cannot be opened (QEMU of a KVM guest will not start)"
    else
        if in_ns "${holder}" test -e "${marker}"; then
            in_ns "${holder}" umount /dev/kvm
            in_ns "${holder}" rm -f "${marker}"
        fi
        ok "${host}: /dev/kvm is back"
    fi
}

cmd_pool() {
    local action="$1" host="${2:-}" dir="${3:-}" mib="${4:-}" holder
    require_root
    host_index "${host}" >/dev/null || die "pool-${action}: HOST must be kvmhostN"
    [[ "${dir}" =~ ^/[A-Za-z0-9._/-]+$ && "${dir}" != *..* ]] || die "pool-${action}: DIR must be an absolute path"
    holder="$(resolve_ns "${host}")"
    case "${action}" in
        small)
            [[ "${mib}" =~ ^[0-9]+$ && "${mib}" -ge 1 ]] || die "pool-small: MIB must be a number"
            in_ns "${holder}" mkdir -p "${dir}"
            if in_ns "${holder}" mountpoint -q "${dir}"; then
                in_ns "${holder}" mount -o "remount,size=${mib}m" "${dir}"
            else
                in_ns "${holder}" mount -t tmpfs -o "size=${mib}m,mode=0755" kvmfleet-small "${dir}"
            fi
            ok "${host}: ${dir} holds ${mib} MiB" ;;
        fill)
            in_ns "${holder}" sh -c 'dd if=/dev/zero of="$1/.kvmfleet-ballast" bs=1M status=none 2>/dev/null; sync; true' sh "${dir}"
            ok "${host}: ${dir} is full ($(in_ns "${holder}" df -h --output=avail "${dir}" | tail -1 | tr -d ' ') left)" ;;
        drain)
            in_ns "${holder}" rm -f "${dir}/.kvmfleet-ballast"
            ok "${host}: ${dir} ballast removed" ;;
    esac
}

cmd_exec() {
    local holder
    require_root
    holder="$(resolve_ns "${1:-}")"
    shift
    [[ "${1:-}" == -- ]] && shift
    (($#)) || set -- bash
    exec nsenter -t "${holder}" -m -u -n --wd=/ -- "$@"
}

cmd_sshd() {
    local action="$1" host="${2:-}" i holder
    require_root
    i="$(host_index "${host}")" || die "sshd-${action}: HOST must be kvmhostN"
    holder="$(resolve_ns "${host}")"
    lock
    if [[ "${action}" == stop ]]; then
        stop_daemon "${holder}" sshd sshd
        ok "${host}: sshd stopped (open sessions stay, new connections are refused)"
    else
        host_start_sshd "${i}"
        host_wait_sshd "${i}" || die "${host}: sshd did not start"
    fi
}

cmd_link() {
    local action="$1" host="${2:-}" i veth
    require_root
    if [[ "${host}" == "${TB_MN}" || "${host}" == mn ]]; then
        veth="${TB_MN_VETH}"
    else
        i="$(host_index "${host}")" || die "link-${action}: HOST must be kvmhostN or ${TB_MN}"
        veth="$(host_veth "${i}")"
    fi
    link_exists "${veth}" || die "${host}: link ${veth} does not exist (hack/testbed.sh up)"
    ip link set "${veth}" "${action}"
    ok "${host}: link ${veth} ${action}"
}

cmd_env() {
    [[ -f "${TB_HOSTS_JSON}" ]] || die "no ${TB_HOSTS_JSON}; run hack/testbed.sh up"
    printf 'KVMFLEET_TESTBED_DIR=%q\n' "${TB}"
    printf 'KVMFLEET_TESTBED_HOSTS_JSON=%q\n' "${TB_HOSTS_JSON}"
    printf 'KVMFLEET_TESTBED_KEY=%q\n' "${TB_KEY}"
    printf 'KVMFLEET_TESTBED_KNOWN_HOSTS=%q\n' "${TB_KNOWN_HOSTS}"
    printf 'KVMFLEET_TESTBED_SSH=%q\n' "${TB_SSH_WRAPPER}"
}

main() {
    local cmd="${1:-}"
    (($#)) && shift
    case "${cmd}" in
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        status) cmd_status "$@" ;;
        exec) cmd_exec "$@" ;;
        sshd-stop) cmd_sshd stop "$@" ;;
        sshd-start) cmd_sshd start "$@" ;;
        link-down) cmd_link down "$@" ;;
        link-up) cmd_link up "$@" ;;
        libvirtd-kill) cmd_libvirtd kill "$@" ;;
        libvirtd-start) cmd_libvirtd start "$@" ;;
        libvirtd-restart) cmd_libvirtd restart "$@" ;;
        libvirtd-hang) cmd_libvirtd hang "$@" ;;
        libvirtd-resume) cmd_libvirtd resume "$@" ;;
        nfs-stop) cmd_nfs stop "$@" ;;
        nfs-start) cmd_nfs start "$@" ;;
        link-loss) cmd_link_fault loss "$@" ;;
        link-delay) cmd_link_fault delay "$@" ;;
        link-clear) cmd_link_fault clear "$@" ;;
        kvm-break) cmd_kvm break "$@" ;;
        kvm-repair) cmd_kvm repair "$@" ;;
        pool-small) cmd_pool small "$@" ;;
        pool-fill) cmd_pool fill "$@" ;;
        pool-drain) cmd_pool drain "$@" ;;
        env) cmd_env "$@" ;;
        -h | --help | help) usage ;;
        '') usage; exit 2 ;;
        *) usage >&2; die "unknown command ${cmd}" ;;
    esac
}

main "$@"
