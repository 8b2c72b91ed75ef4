# shellcheck shell=bash
# The management network: bridge kvmf-mgmt (10.77.0.1/24) in the root namespace and
# one veth pair per namespace (root end on the bridge, far end `eth0` inside).
# Sourced by hack/testbed.sh (needs lib.sh).

# bridge_up : create/repair kvmf-mgmt. Nothing is routed or NATed beyond it.
bridge_up() {
    if link_exists "${TB_BRIDGE}"; then
        [[ -d "/sys/class/net/${TB_BRIDGE}/bridge" ]] || die "${TB_BRIDGE} exists but is not a bridge"
        ok "bridge ${TB_BRIDGE} already exists"
    else
        ip link add "${TB_BRIDGE}" type bridge stp_state 0 forward_delay 0
        ip link set "${TB_BRIDGE}" address "${TB_BRIDGE_MAC}"
        ok "bridge ${TB_BRIDGE} created"
    fi
    sysctl -qw "net.ipv6.conf.${TB_BRIDGE}.disable_ipv6=1" 2>/dev/null || true
    if ! ip -4 -o addr show dev "${TB_BRIDGE}" | grep -F " ${TB_GATEWAY}/24 " >/dev/null; then
        ip addr add "${TB_GATEWAY}/24" dev "${TB_BRIDGE}"
    fi
    ip link set "${TB_BRIDGE}" up
    local via
    via="$(ip -4 -o route get "${TB_MN_ADDR}" 2>/dev/null || true)"
    [[ "${via}" == *" dev ${TB_BRIDGE} "* ]] \
        || die "10.77.0.0/24 is not routed to ${TB_BRIDGE} (ip route get ${TB_MN_ADDR}: ${via}); another interface uses this subnet"
    if [[ "$(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null)" == 1 ]]; then
        warn "IPv4 forwarding is on in the root namespace: testbed hosts have a default route via ${TB_GATEWAY}; nothing in the testbed sends traffic beyond 10.77.0.0/24, but the kernel would forward it"
    fi
}

bridge_down() {
    link_exists "${TB_BRIDGE}" || return 0
    local port foreign=''
    for port in /sys/class/net/"${TB_BRIDGE}"/brif/*; do
        [[ -e "${port}" ]] || continue
        port="${port##*/}"
        [[ "${port}" == kvmf-* ]] || foreign+=" ${port}"
    done
    if [[ -n "${foreign}" ]]; then
        warn "${TB_BRIDGE} still has ports that are not the testbed's (${foreign# }); leaving it"
        return 0
    fi
    ip link del "${TB_BRIDGE}"
    ok "bridge ${TB_BRIDGE} removed"
}

# attach HOLDER ROOT_VETH MAC ADDR DEFAULT_ROUTE(yes|no)
attach() {
    local holder="$1" veth="$2" mac="$3" addr="$4" route="$5"
    if link_exists "${veth}"; then
        ip link del "${veth}"
    fi
    ip link add "${veth}" type veth peer name eth0 netns "${holder}"
    sysctl -qw "net.ipv6.conf.${veth}.disable_ipv6=1" 2>/dev/null || true
    ip link set "${veth}" master "${TB_BRIDGE}"
    ip link set "${veth}" up
    in_ns "${holder}" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 || true
    in_ns "${holder}" sysctl -qw net.ipv4.ip_nonlocal_bind=1
    in_ns "${holder}" ip link set lo up
    in_ns "${holder}" ip link set eth0 address "${mac}"
    in_ns "${holder}" ip addr add "${addr}/24" dev eth0
    in_ns "${holder}" ip link set eth0 up
    if [[ "${route}" == yes ]]; then
        in_ns "${holder}" ip route add default via "${TB_GATEWAY}"
    fi
}

# link_is_up LINK : the link exists and is administratively up.
link_is_up() {
    local line flags
    line="$(ip -o link show dev "$1" 2>/dev/null)" || return 1
    flags="${line#*<}"
    flags="${flags%%>*}"
    [[ ",${flags}," == *",UP,"* ]]
}
