# Shared by hack/*.sh: install the Debian packages and the Python environment kvmfleet needs.
# shellcheck shell=bash

KVMFLEET_DEBS=(
    python3-venv pkg-config libvirt-dev gcc libc6-dev openssh-client curl openssl psmisc
    qemu-utils libvirt-clients
)

install_system_deps() {
    local missing=() pkg
    for pkg in "${KVMFLEET_DEBS[@]}"; do
        dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q "install ok installed" || missing+=("${pkg}")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    printf '[deps] installing Debian packages: %s\n' "${missing[*]}" >&2
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
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
