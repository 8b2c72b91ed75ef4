#!/usr/bin/env bash
# Keep the Helm chart's CRDs byte-identical to the ones in crds/ (the source of truth).
#
#   hack/sync-chart-crds.sh          copy crds/*.yaml into charts/kvmfleet/files/crds/, drop stale copies
#   hack/sync-chart-crds.sh --check  change nothing; exit 1 and list the differences if out of sync
#
# tests/unit/test_chart.py fails with a pointer to this script when the copies drift.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="${REPO}/crds"
DST="${REPO}/charts/kvmfleet/files/crds"

check=0
case "${1:-}" in
    "") ;;
    --check) check=1 ;;
    *) printf 'usage: %s [--check]\n' "$0" >&2; exit 2 ;;
esac

shopt -s nullglob
sources=("${SRC}"/*.yaml)
[ "${#sources[@]}" -gt 0 ] || { printf '[sync-chart-crds] ERROR: no CRDs in %s\n' "${SRC}" >&2; exit 1; }

drift=0
for src in "${sources[@]}"; do
    dst="${DST}/${src##*/}"
    if ! cmp -s "${src}" "${dst}"; then
        drift=1
        if [ "${check}" -eq 1 ]; then
            printf 'out of sync: charts/kvmfleet/files/crds/%s\n' "${src##*/}"
        else
            mkdir -p "${DST}"
            cp "${src}" "${dst}"
            printf 'copied crds/%s\n' "${src##*/}"
        fi
    fi
done
for dst in "${DST}"/*; do
    if [ ! -e "${SRC}/${dst##*/}" ]; then
        drift=1
        if [ "${check}" -eq 1 ]; then
            printf 'stale: charts/kvmfleet/files/crds/%s (not in crds/)\n' "${dst##*/}"
        else
            rm -f "${dst}"
            printf 'removed stale charts/kvmfleet/files/crds/%s\n' "${dst##*/}"
        fi
    fi
done
if [ "${check}" -eq 1 ] && [ "${drift}" -eq 1 ]; then
    printf 'run hack/sync-chart-crds.sh to copy crds/*.yaml into the chart\n' >&2
    exit 1
fi
exit 0
