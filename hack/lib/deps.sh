# Shared by hack/*.sh: install the Debian packages and the Python environment kvmfleet needs,
# and check (preflight) that every command and device the tests use is there.
# The packages and what each one brings are listed once, in hack/lib/packages.tsv.
#
# Sourced (hack/test.sh, hack/stack.sh, hack/cluster.sh, hack/testbed.sh), or run:
#   bash hack/lib/deps.sh install [SCOPE...]     install the packages of SCOPEs (default: test cluster testbed)
#   bash hack/lib/deps.sh preflight [SCOPE...]   check their commands, files and devices; exit 1 naming
#                                                each missing one and its Debian package
#   bash hack/lib/deps.sh packages [SCOPE...]    print the packages, one a line
# shellcheck shell=bash

# (Builtins only: the preflight must run whatever PATH holds.)
KVMFLEET_DEPS_DIR="${BASH_SOURCE[0]%/*}"
[[ "${KVMFLEET_DEPS_DIR}" != "${BASH_SOURCE[0]}" ]] || KVMFLEET_DEPS_DIR=.
KVMFLEET_DEPS_DIR="$(cd "${KVMFLEET_DEPS_DIR}" && pwd)"
KVMFLEET_PACKAGES_TSV="${KVMFLEET_DEPS_DIR}/packages.tsv"
# What the test command needs before it starts: its own tools, the control plane's and the testbed's.
KVMFLEET_TEST_SCOPES=(test cluster testbed)

# deps_rows SCOPE... : "PACKAGE CHECK" for each row of those scopes (bash builtins only, so
# the preflight works whatever PATH holds).
deps_rows() {
    local scope pkg check want
    while read -r scope pkg check _; do
        [[ -n "${scope}" && "${scope}" != \#* ]] || continue
        for want in "$@"; do
            if [[ "${scope}" == "${want}" ]]; then
                printf '%s %s\n' "${pkg}" "${check:--}"
                break
            fi
        done
    done <"${KVMFLEET_PACKAGES_TSV}"
}

# deps_packages SCOPE... : the packages of those scopes, each once.
deps_packages() {
    local -A seen=()
    local pkg check
    while read -r pkg check; do
        [[ -z "${seen[${pkg}]:-}" ]] || continue
        seen[${pkg}]=1
        printf '%s\n' "${pkg}"
    done < <(deps_rows "$@")
}

deps_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]
}

# install_debs PKG... : install the packages that are missing (apt-get update first, and
# waiting up to 10 minutes while another apt/dpkg holds its lock).
install_debs() {
    local missing=() pkg
    command -v dpkg-query >/dev/null || { printf '[deps] this needs Debian (no dpkg-query)\n' >&2; return 1; }
    for pkg in "$@"; do
        deps_installed "${pkg}" || missing+=("${pkg}")
    done
    [[ "${#missing[@]}" -eq 0 ]] && return 0
    printf '[deps] installing Debian packages: %s\n' "${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
        --no-install-recommends "${missing[@]}" >&2
}

# install_system_deps [SCOPE...] : the packages of SCOPEs (default: what the test command needs).
install_system_deps() {
    local -a scopes=("$@") pkgs=()
    ((${#scopes[@]})) || scopes=("${KVMFLEET_TEST_SCOPES[@]}")
    mapfile -t pkgs < <(deps_packages "${scopes[@]}")
    install_debs "${pkgs[@]}"
}

# preflight [SCOPE...] : every command, file and device of SCOPEs (default: the test
# command's) is there; else print each missing one with its Debian package and return 1.
preflight() {
    local -a scopes=("$@") missing=() pkgs=()
    local -A seen=() pkg_seen=()
    local pkg check item want testbed=0
    ((${#scopes[@]})) || scopes=("${KVMFLEET_TEST_SCOPES[@]}")
    for want in "${scopes[@]}"; do [[ "${want}" == testbed ]] && testbed=1; done
    while read -r pkg check; do
        case "${check}" in
            -) continue ;;
            /*) [[ -e "${check}" ]] && continue ;;
            *) command -v "${check}" >/dev/null 2>&1 && continue ;;
        esac
        item="${check} (Debian package ${pkg})"
        [[ -n "${seen[${item}]:-}" ]] && continue
        seen[${item}]=1
        missing+=("${item}")
        [[ -n "${pkg_seen[${pkg}]:-}" ]] || { pkg_seen[${pkg}]=1; pkgs+=("${pkg}"); }
    done < <(deps_rows "${scopes[@]}")
    if ((testbed)); then
        ((EUID == 0)) || missing+=("root (the testbed creates namespaces, bridges and mounts)")
        [[ -c /dev/net/tun ]] \
            || missing+=("/dev/net/tun (the kernel's tun device, for the VMs' NICs: modprobe tun, or give the container the device)")
        if [[ -c /dev/kvm ]]; then
            printf '[preflight] /dev/kvm is present: the testbed keeps KVM usable on its KVM hosts\n' >&2
        else
            printf '[preflight] /dev/kvm does not exist on this machine: every testbed host is emulated (TCG) and the KVM tests skip\n' >&2
        fi
    fi
    if ((${#missing[@]})); then
        printf '[preflight] missing:\n' >&2
        printf '[preflight]   %s\n' "${missing[@]}" >&2
        ((${#pkgs[@]})) && printf '[preflight] install with: apt-get install %s\n' "${pkgs[*]}" >&2
        return 1
    fi
    printf '[preflight] ok: every command and device of %s is there\n' "${scopes[*]}" >&2
}

ensure_venv() {
    # A virtualenv in <repo>/.venv with kvmfleet installed editable with its dev extras.
    local venv="${REPO}/.venv" stamp
    stamp="${venv}/.kvmfleet-installed"
    if [ -f "${stamp}" ] && [ "${stamp}" -nt "${REPO}/pyproject.toml" ]; then
        return 0
    fi
    printf '[deps] creating the Python environment in %s\n' "${venv}" >&2
    [ -x "${venv}/bin/python" ] || python3 -m venv "${venv}"
    "${venv}/bin/python" -m pip install -q --upgrade pip >&2
    "${venv}/bin/python" -m pip install -q -e "${REPO}[dev]" >&2
    touch "${stamp}"
}

if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
    set -euo pipefail
    REPO="$(cd "${KVMFLEET_DEPS_DIR}/../.." && pwd)"
    command="${1:-}"
    (($#)) && shift
    case "${command}" in
        install) install_system_deps "$@" ;;
        preflight) preflight "$@" ;;
        packages) if (($#)); then deps_packages "$@"; else deps_packages "${KVMFLEET_TEST_SCOPES[@]}"; fi ;;
        *) sed -n '5,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
    esac
fi
