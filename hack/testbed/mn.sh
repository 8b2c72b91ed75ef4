# shellcheck shell=bash
# The management namespace kvmf-mn (10.77.0.2), xCAT's management node in miniature:
# rpcbind + nfs-ganesha (VFS) exporting /srv/vms, dnsmasq (DHCP, iPXE boot file) and
# an HTTP server with boot.ipxe, the guest kernel and its initramfs.
# Sourced by hack/testbed.sh (needs lib.sh, net.sh, guest.sh).

mn_http_url() { printf 'http://%s:%s' "${TB_MN_ADDR}" "${TB_HTTP_PORT}"; }

mn_files() {
    mkdir -p "${TB_MN_DIR}/http" "${TB_MN_DIR}/dhcp-hosts.d" "${TB_MN_DIR}/log" "${TB_NFS_DIR}"
    render "${TB_LIBDIR}/templates/ganesha.conf.in" "${TB_MN_DIR}/ganesha.conf" \
        "MN_ADDR=${TB_MN_ADDR}" "EXPORT=${TB_NFS_EXPORT}" "EXPORT_DIR=${TB_NFS_DIR}"
    render "${TB_LIBDIR}/templates/boot.ipxe.in" "${TB_MN_DIR}/http/boot.ipxe.new" \
        "HTTP_URL=$(mn_http_url)"
    mv -f "${TB_MN_DIR}/http/boot.ipxe.new" "${TB_MN_DIR}/http/boot.ipxe"
    local src dst
    for pair in "${GUEST_KERNEL}:vmlinuz" "${GUEST_INITRD}:initrd.gz"; do
        src="${pair%:*}" dst="${TB_MN_DIR}/http/${pair##*:}"
        if ! cmp -s "${src}" "${dst}"; then
            cp -f "${src}" "${dst}.new"
            mv -f "${dst}.new" "${dst}"
        fi
    done
    if [[ -r /usr/lib/ipxe/undionly.kpxe ]]; then
        mkdir -p "${TB_MN_DIR}/tftp"
        cp -f /usr/lib/ipxe/undionly.kpxe "${TB_MN_DIR}/tftp/"
    fi
}

mn_namespace() {
    local holder
    if holder="$(holder_pid "${TB_MN}")" \
        && [[ -e "/proc/${holder}/root/run/kvmfleet/setup.done" ]] && link_exists "${TB_MN_VETH}"; then
        ok "namespace ${TB_MN} already up (holder pid ${holder})"
        ip link set "${TB_MN_VETH}" up
        return 0
    fi
    if holder_pid "${TB_MN}" >/dev/null; then
        info "namespace ${TB_MN} is half set up; recreating it"
    fi
    stop_namespace "${TB_MN}"
    [[ -d /srv ]] || die "/srv does not exist (the NFS export is mounted under it inside ${TB_MN})"
    start_holder "${TB_MN}" || die "could not create the namespace ${TB_MN}"
    holder="$(holder_pid "${TB_MN}")"
    in_ns "${holder}" mount -t tmpfs -o mode=0755 kvmfleet-run /run
    in_ns "${holder}" mkdir -p /run/kvmfleet /run/ganesha/recovery
    in_ns "${holder}" mount -t sysfs kvmfleet-sys /sys
    in_ns "${holder}" mount -t tmpfs -o mode=0755 kvmfleet-srv /srv
    in_ns "${holder}" mkdir -p "${TB_NFS_EXPORT}"
    in_ns "${holder}" mount --bind "${TB_NFS_DIR}" "${TB_NFS_EXPORT}"
    bind_etc "${holder}" "${TB_MN}"
    attach "${holder}" "${TB_MN_VETH}" "${TB_MN_MAC}" "${TB_MN_ADDR}" no
    in_ns "${holder}" touch /run/kvmfleet/setup.done
    ok "namespace ${TB_MN} created (holder pid ${holder}, eth0 ${TB_MN_ADDR})"
}

_rpcbind_ready() { in_ns "$1" rpcinfo -p 127.0.0.1 >/dev/null 2>&1; }

_nfs_ready() {
    in_ns "$1" rpcinfo -t "${TB_MN_ADDR}" mountd 3 >/dev/null 2>&1 && tcp_open "${TB_MN_ADDR}" 2049
}

mn_daemons() {
    local h log="${TB_MN_DIR}/log" url
    h="$(holder_pid "${TB_MN}")" || die "namespace ${TB_MN} is not running"
    url="$(mn_http_url)"

    ensure_daemon "${h}" "${TB_MN}" rpcbind rpcbind "${log}/rpcbind.log" rpcbind -f
    wait_daemon "${h}" "${TB_MN}" rpcbind rpcbind "${log}/rpcbind.log" 20 \
        _rpcbind_ready "${h}" || return 1

    ensure_daemon "${h}" "${TB_MN}" nfs-ganesha ganesha.nfsd "${log}/ganesha.out" \
        ganesha.nfsd -F -f "${TB_MN_DIR}/ganesha.conf" -L "${log}/ganesha.log" \
        -p /run/ganesha/ganesha.pid -N NIV_EVENT
    wait_daemon "${h}" "${TB_MN}" nfs-ganesha ganesha.nfsd "${log}/ganesha.log" 60 \
        _nfs_ready "${h}" || return 1

    # The scale mode (up --light) boots no guest over the network: no DHCP, no HTTP.
    ((${TB_LIGHT:-0})) && return 0

    local -a tftp=()
    if [[ -r "${TB_MN_DIR}/tftp/undionly.kpxe" ]]; then
        # Clients without iPXE (a NIC ROM that is plain PXE) chain-load iPXE first.
        tftp=(--enable-tftp --tftp-root="${TB_MN_DIR}/tftp" "--dhcp-boot=tag:!ipxe,undionly.kpxe")
    fi
    ensure_daemon "${h}" "${TB_MN}" dnsmasq dnsmasq "${log}/dnsmasq.log" \
        dnsmasq --keep-in-foreground --conf-file=/dev/null --port=0 --user=root --group=root \
        --interface=eth0 --bind-interfaces \
        --pid-file=/run/kvmfleet/dnsmasq.own.pid \
        --dhcp-range="${TB_DHCP_FIRST},${TB_DHCP_LAST},255.255.255.0,1h" \
        --dhcp-authoritative \
        --dhcp-leasefile="${TB_MN_DIR}/dnsmasq.leases" \
        --dhcp-hostsdir="${TB_MN_DIR}/dhcp-hosts.d" \
        --dhcp-option=option:router --dhcp-option=option:dns-server \
        --dhcp-userclass=set:ipxe,iPXE \
        --dhcp-boot="tag:ipxe,${url}/boot.ipxe" \
        "${tftp[@]}" \
        --log-dhcp --log-facility=-
    wait_daemon "${h}" "${TB_MN}" dnsmasq dnsmasq "${log}/dnsmasq.log" 20 \
        log_since_start_has "${log}/dnsmasq.log" 'DHCP, IP range' || return 1

    ensure_daemon "${h}" "${TB_MN}" http python3 "${log}/http.log" \
        python3 -m http.server "${TB_HTTP_PORT}" --bind "${TB_MN_ADDR}" --directory "${TB_MN_DIR}/http"
    wait_daemon "${h}" "${TB_MN}" http python3 "${log}/http.log" 20 \
        tcp_open "${TB_MN_ADDR}" "${TB_HTTP_PORT}" || return 1
}
