# shellcheck shell=bash
# Hypervisor hosts kvmhost1..N: each in its own mount+net+uts namespaces with its own
# /run, libvirt state, /etc/libvirt, /etc/ssh, virtlogd, libvirtd and sshd.
# Sourced by hack/testbed.sh (needs lib.sh, net.sh).

QEMU_USER="${KVMFLEET_TESTBED_QEMU_USER:-libvirt-qemu}"

host_dir() { printf '%s/%s' "${TB_HOSTS_DIR}" "$(host_name "$1")"; }
host_key_pub() { printf '%s/%s/ssh_host_ed25519_key.pub' "${TB_IDENTITY}" "$(host_name "$1")"; }
host_uuid_file() { printf '%s/%s/host_uuid' "${TB_IDENTITY}" "$(host_name "$1")"; }

# host_identity I : ssh host key and libvirt host UUID; kept across down/up.
host_identity() {
    local name id
    name="$(host_name "$1")" id="${TB_IDENTITY}/$(host_name "$1")"
    mkdir -p "${id}"
    if [[ ! -s "${id}/ssh_host_ed25519_key" ]]; then
        rm -f "${id}/ssh_host_ed25519_key" "${id}/ssh_host_ed25519_key.pub"
        ssh-keygen -q -t ed25519 -N '' -C "root@${name}" -f "${id}/ssh_host_ed25519_key"
    fi
    if [[ ! -s "${id}/host_uuid" ]]; then
        cat /proc/sys/kernel/random/uuid >"${id}/host_uuid"
    fi
}

# host_files I : the private /etc/libvirt and /etc/ssh of host I (written only when
# the host is created: they are bind-mounted into its namespace).
host_files() {
    local i="$1" name addr dir f
    name="$(host_name "${i}")" addr="$(host_addr "${i}")" dir="$(host_dir "${i}")"
    host_identity "${i}"
    rm -rf "${dir}/etc-libvirt" "${dir}/etc-ssh"
    mkdir -p "${dir}/log" "${dir}/etc-libvirt/qemu" "${dir}/etc-ssh"

    # /etc/libvirt: the distribution's config files (no domains, no networks).
    for f in /etc/libvirt/*.conf; do
        cp -p "${f}" "${dir}/etc-libvirt/"
    done
    [[ -d /etc/libvirt/nwfilter ]] && cp -a /etc/libvirt/nwfilter "${dir}/etc-libvirt/"
    mkdir -p "${dir}/etc-libvirt/hooks"
    cat >>"${dir}/etc-libvirt/libvirtd.conf" <<EOF

# ---- kvmfleet testbed (${name})
host_uuid = "$(<"$(host_uuid_file "${i}")")"
# The sockets live in the host's private /run and are only reachable by root in it.
auth_unix_ro = "none"
auth_unix_rw = "none"
EOF
    if ((${TB_LIGHT:-0})); then
        # The scale mode: 20+ hosts on a 2-core machine, so few idle threads per libvirtd.
        cat >>"${dir}/etc-libvirt/libvirtd.conf" <<EOF
min_workers = 1
max_workers = 4
prio_workers = 1
admin_min_workers = 1
admin_max_workers = 1
EOF
    fi
    cat >>"${dir}/etc-libvirt/qemu.conf" <<EOF

# ---- kvmfleet testbed (${name})
# QEMU runs as the distribution's default user, as on a real Debian host: it opens
# /dev/kvm through the kvm group, and NFS images must be usable by this user
# (override with KVMFLEET_TESTBED_QEMU_USER=root).
user = "${QEMU_USER}"
group = "${QEMU_USER}"
# Several libvirtd share one cgroup tree here: let none of them manage cgroups.
cgroup_controllers = [ ]
security_driver = "none"
EOF

    # /etc/ssh: sshd and ssh client configuration, the host key.
    render "${TB_LIBDIR}/templates/sshd_config.in" "${dir}/etc-ssh/sshd_config" \
        "NAME=${name}" "ADDR=${addr}" "PORT=${TB_SSH_PORT}" "AUTHORIZED_KEYS=${TB_IDENTITY}/authorized_keys"
    render "${TB_LIBDIR}/templates/ssh_config.in" "${dir}/etc-ssh/ssh_config" \
        "NAME=${name}" "KEY=${TB_KEY}" "KNOWN_HOSTS=${TB_KNOWN_HOSTS}"
    install -m 0600 "${TB_IDENTITY}/${name}/ssh_host_ed25519_key" "${dir}/etc-ssh/"
    install -m 0644 "${TB_IDENTITY}/${name}/ssh_host_ed25519_key.pub" "${dir}/etc-ssh/"
    [[ -r /etc/ssh/moduli ]] && cp -p /etc/ssh/moduli "${dir}/etc-ssh/"
    return 0
}

# _tmpfs_like HOLDER DIR : a tmpfs over DIR inside the namespace, with DIR's directory
# tree (modes and owners, no files) copied from the root namespace.
_tmpfs_like() {
    local holder="$1" d="$2" mode uid gid rel
    [[ -d "${d}" ]] || die "${d} does not exist (is libvirt-daemon-system installed?)"
    read -r mode uid gid < <(stat -c '%a %u %g' "${d}")
    in_ns "${holder}" mount -t tmpfs -o "mode=${mode},uid=${uid},gid=${gid}" kvmfleet-tmp "${d}"
    while read -r mode uid gid rel; do
        [[ -n "${rel}" ]] || continue
        in_ns "${holder}" install -d -m "${mode}" -o "${uid}" -g "${gid}" "${d}/${rel}"
    done < <(find "${d}" -mindepth 1 -type d -printf '%m %U %G %P\n')
}

host_mounts() {
    local holder="$1" i="$2" kvm="$3" dir
    dir="$(host_dir "${i}")"
    in_ns "${holder}" mount -t tmpfs -o mode=0755 kvmfleet-run /run
    in_ns "${holder}" install -d -m 0755 /run/kvmfleet /run/sshd /run/libvirt /run/lock
    # A sysfs of this network namespace (libvirt reads /sys/class/net).
    in_ns "${holder}" mount -t sysfs kvmfleet-sys /sys
    _tmpfs_like "${holder}" /var/lib/libvirt
    _tmpfs_like "${holder}" /var/cache/libvirt
    # A private /var/log: libvirt's logs, and sshd's wtmp/lastlog stay in the host.
    in_ns "${holder}" mount -t tmpfs -o mode=0755 kvmfleet-log /var/log
    in_ns "${holder}" install -d -m 0755 /var/log/libvirt /var/log/libvirt/qemu
    in_ns "${holder}" touch /var/log/wtmp /var/log/btmp /var/log/lastlog
    in_ns "${holder}" mount --bind "${dir}/etc-libvirt" /etc/libvirt
    in_ns "${holder}" mount --bind "${dir}/etc-ssh" /etc/ssh
    bind_etc "${holder}" "$(host_name "${i}")"
    # The host's local disk directory (the `dir:///var/lib/kvmfleet/images` pool): its
    # own, under the run directory, as on separate machines. Not shared with other
    # hosts or other testbeds; removed with the host by `down`.
    install -d -m 0755 "${dir}/images"
    mkdir -p /var/lib/kvmfleet/images
    in_ns "${holder}" mount --bind "${dir}/images" /var/lib/kvmfleet/images
    # root's shell start-up files of this machine (a developer's pyenv or conda init that
    # takes seconds and global locks) are not a hypervisor's: bash reads ~/.bashrc for
    # every command sshd runs. Each host sees empty ones.
    : >"${dir}/empty-rc"
    local rc
    for rc in /root/.bashrc /root/.profile /root/.bash_profile /root/.bash_login; do
        [[ -f "${rc}" ]] && in_ns "${holder}" mount --bind "${dir}/empty-rc" "${rc}"
    done
    if [[ "${kvm}" == yes ]]; then
        host_kvm_device "${holder}"
    elif [[ -e /dev/kvm ]]; then
        # KVM hidden: /dev/kvm becomes a mode 000 character device without a driver
        # (0:0). QEMU's user cannot open it, so QEMU and libvirt's own "is KVM usable"
        # check agree that only TCG is possible. (/dev/null would pass libvirt's
        # access check while QEMU finds no KVM: libvirt then re-probes QEMU on every
        # capabilities call.) Even root gets ENXIO when opening it.
        in_ns "${holder}" mknod -m 0000 /run/kvmfleet/kvm-hidden c 0 0
        in_ns "${holder}" mount --bind /run/kvmfleet/kvm-hidden /dev/kvm
    fi
}

# kvm_group_ready : group kvm exists and QEMU's user is in it, as on a Debian host where
# udev created the group and libvirt-daemon-system's postinst added libvirt-qemu to it. (A
# machine without udev may have neither.)
kvm_group_ready() {
    getent group kvm >/dev/null || groupadd --system kvm || die "could not create group kvm"
    [[ "${QEMU_USER}" == root ]] && return 0
    id -u "${QEMU_USER}" >/dev/null 2>&1 \
        || die "user ${QEMU_USER} does not exist (is libvirt-daemon-system installed?)"
    if ! id -nG "${QEMU_USER}" | tr ' ' '\n' | grep -qx kvm; then
        usermod -a -G kvm "${QEMU_USER}" || die "could not add ${QEMU_USER} to group kvm"
        info "added ${QEMU_USER} to group kvm (QEMU opens /dev/kvm through it)"
    fi
}

# host_kvm_device HOLDER : /dev/kvm inside HOLDER's mount namespace as udev makes it on a
# real Debian host (root:kvm, 0660), so that QEMU running as ${QEMU_USER} may open it: a
# node of the same device with that owner and mode, bind-mounted over /dev/kvm. The
# machine's own /dev/kvm (root-only 0600 where no udev runs) is left as it is.
host_kvm_device() {
    local holder="$1" major minor
    kvm_group_ready
    read -r major minor < <(stat -c '%t %T' /dev/kvm)
    in_ns "${holder}" mknod -m 0660 /run/kvmfleet/kvm c "$((16#${major}))" "$((16#${minor}))"
    in_ns "${holder}" chgrp kvm /run/kvmfleet/kvm
    in_ns "${holder}" mount --bind /run/kvmfleet/kvm /dev/kvm
}

# host_kvm_usable HOLDER : /dev/kvm in HOLDER's namespace is the root:kvm 0660 node above.
host_kvm_usable() {
    [[ "$(stat -c '%G %a' "/proc/$1/root/dev/kvm" 2>/dev/null)" == "kvm 660" ]]
}

host_virt_of() { cat "$(host_dir "$1")/virtualization" 2>/dev/null; }

# host_namespace I KVM(yes|no) : create host I, or keep it if it is fully set up.
host_namespace() {
    local i="$1" kvm="$2" name addr veth holder want
    name="$(host_name "${i}")" addr="$(host_addr "${i}")" veth="$(host_veth "${i}")"
    want=emulated
    if [[ "${kvm}" == yes ]]; then
        if [[ -c /dev/kvm ]]; then
            want=kvm
        else
            warn "${name}: /dev/kvm does not exist on this machine; the host is emulated (TCG)"
            kvm=no
        fi
    fi
    if holder="$(holder_pid "${name}")"; then
        if [[ -e "/proc/${holder}/root/run/kvmfleet/setup.done" ]] && link_exists "${veth}" \
            && [[ "$(host_virt_of "${i}")" == "${want}" ]] \
            && { [[ "${want}" != kvm ]] || host_kvm_usable "${holder}"; }; then
            ok "${name}: namespaces already up (holder pid ${holder}, ${addr}, ${want})"
            return 0
        fi
        info "${name}: recreating (half set up, virtualization changes to ${want}, or /dev/kvm not usable by QEMU)"
    fi
    stop_namespace "${name}"
    host_files "${i}"
    start_holder "${name}" || die "${name}: could not create the namespaces"
    holder="$(holder_pid "${name}")"
    host_mounts "${holder}" "${i}" "${kvm}"
    attach "${holder}" "${veth}" "$(host_mac "${i}")" "${addr}" yes
    printf '%s\n' "${want}" >"$(host_dir "${i}")/virtualization"
    in_ns "${holder}" touch /run/kvmfleet/setup.done
    ok "${name}: namespaces created (holder pid ${holder}, eth0 ${addr}, ${want})"
}

host_start_daemons() {
    local i="$1" name holder log
    name="$(host_name "${i}")" log="$(host_dir "${i}")/log"
    holder="$(holder_pid "${name}")" || die "${name} is not running"
    ip link set "$(host_veth "${i}")" up
    ensure_daemon "${holder}" "${name}" virtlogd virtlogd "${log}/virtlogd.log" virtlogd
    wait_daemon "${holder}" "${name}" virtlogd virtlogd "${log}/virtlogd.log" 15 \
        test -S "/proc/${holder}/root/run/libvirt/virtlogd-sock" || return 1
    ensure_daemon "${holder}" "${name}" libvirtd libvirtd "${log}/libvirtd.log" libvirtd
    host_start_sshd "${i}"
}

host_start_sshd() {
    local i="$1" name holder log
    name="$(host_name "${i}")" log="$(host_dir "${i}")/log"
    holder="$(holder_pid "${name}")" || die "${name} is not running"
    in_ns "${holder}" /usr/sbin/sshd -t -f /etc/ssh/sshd_config || die "${name}: sshd_config is invalid"
    ensure_daemon "${holder}" "${name}" sshd sshd "${log}/sshd.log" /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config
}

_libvirtd_ready() { in_ns "$1" timeout 15 virsh -q -c qemu:///system version >/dev/null 2>&1; }

host_wait_daemons() {
    local i="$1" name holder log
    name="$(host_name "${i}")" log="$(host_dir "${i}")/log"
    holder="$(holder_pid "${name}")" || die "${name} is not running"
    wait_daemon "${holder}" "${name}" libvirtd libvirtd "${log}/libvirtd.log" 90 \
        _libvirtd_ready "${holder}" || return 1
    host_wait_sshd "${i}"
}

host_wait_sshd() {
    local i="$1" name holder
    name="$(host_name "${i}")"
    holder="$(holder_pid "${name}")" || die "${name} is not running"
    wait_daemon "${holder}" "${name}" sshd sshd "$(host_dir "${i}")/log/sshd.log" 20 \
        tcp_open "$(host_addr "${i}")" "${TB_SSH_PORT}"
}

host_remove() {
    local i="$1" name
    name="$(host_name "${i}")"
    stop_namespace "${name}"
    link_exists "$(host_veth "${i}")" && ip link del "$(host_veth "${i}")"
    rm -rf "$(host_dir "${i}")" "${TB_ETC}/hostname.${name}"
}
