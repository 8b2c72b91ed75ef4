# shellcheck shell=bash
# The PXE test guest: Debian's cloud kernel plus an initramfs of busybox-static whose
# /init prints KVMFLEET-GUEST-READY and a KVMFLEET-TICK counter on the serial console.
# Both are cached under ~/.cache/kvmfleet/guest/<kernel version>/.
# Sourced by hack/testbed.sh (needs lib.sh).

GUEST_KERNEL='' GUEST_INITRD='' GUEST_KVER=''

# _guest_cached_kver : newest kernel version already in the cache.
_guest_cached_kver() {
    local d best=''
    for d in "${TB_CACHE}/guest"/*/; do
        [[ -s "${d}vmlinuz" && "${d}" != */custom/ ]] || continue
        d="${d%/}"
        best="$(printf '%s\n%s\n' "${best}" "${d##*/}" | sed '/^$/d' | sort -V | tail -n 1)"
    done
    [[ -n "${best}" ]] && printf '%s' "${best}"
}

# _guest_kernel_package : the versioned package behind linux-image-cloud-amd64.
_guest_kernel_package() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | head -n 1
}

guest_kernel() {
    local kver='' pkg tmp deb
    if [[ -n "${KVMFLEET_GUEST_KERNEL:-}" ]]; then
        [[ -r "${KVMFLEET_GUEST_KERNEL}" ]] || die "KVMFLEET_GUEST_KERNEL=${KVMFLEET_GUEST_KERNEL} is not readable"
        GUEST_KVER=custom
        mkdir -p "${TB_CACHE}/guest/custom"
        cp -f "${KVMFLEET_GUEST_KERNEL}" "${TB_CACHE}/guest/custom/vmlinuz"
        GUEST_KERNEL="${TB_CACHE}/guest/custom/vmlinuz"
        return 0
    fi
    if kver="$(_guest_cached_kver)"; then
        ok "guest kernel ${kver} (cached)"
    else
        # An installed Debian cloud kernel, if any.
        local f
        for f in /boot/vmlinuz-*-cloud-amd64; do
            [[ -r "${f}" ]] || continue
            kver="${f#/boot/vmlinuz-}"
        done
        mkdir -p "${TB_CACHE}/guest"
        if [[ -n "${kver}" ]]; then
            mkdir -p "${TB_CACHE}/guest/${kver}"
            cp -f "/boot/vmlinuz-${kver}" "${TB_CACHE}/guest/${kver}/vmlinuz"
            ok "guest kernel ${kver} (from /boot)"
        else
            pkg="$(_guest_kernel_package)"
            if [[ -z "${pkg}" ]]; then
                apt_update_once
                pkg="$(_guest_kernel_package)"
            fi
            [[ -n "${pkg}" ]] || die "apt offers no linux-image-cloud-amd64; cannot get a guest kernel"
            kver="${pkg#linux-image-}"
            step "downloading ${pkg} (guest kernel; the package is unpacked in the cache, not installed)"
            tmp="$(mktemp -d)"
            (cd "${tmp}" && apt_get download "${pkg}") || { rm -rf "${tmp}"; die "apt-get download ${pkg} failed"; }
            deb="$(find "${tmp}" -maxdepth 1 -name '*.deb' | head -n 1)"
            mkdir -p "${tmp}/x"
            dpkg-deb --fsys-tarfile "${deb}" | tar -x -C "${tmp}/x" "./boot/vmlinuz-${kver}"
            mkdir -p "${TB_CACHE}/guest/${kver}"
            mv -f "${tmp}/x/boot/vmlinuz-${kver}" "${TB_CACHE}/guest/${kver}/vmlinuz"
            rm -rf "${tmp}"
            ok "guest kernel ${kver} cached in ${TB_CACHE}/guest/${kver}"
        fi
    fi
    GUEST_KVER="${kver}"
    GUEST_KERNEL="${TB_CACHE}/guest/${kver}/vmlinuz"
}

guest_initrd() {
    local busybox=/bin/busybox init="${TB_LIBDIR}/guest/init" key out stage
    [[ -x "${busybox}" ]] || die "${busybox} is missing (package busybox-static)"
    if ldd "${busybox}" >/dev/null 2>&1; then
        die "${busybox} is dynamically linked; install busybox-static"
    fi
    key="$(cat "${init}" "${busybox}" | sha256sum | cut -c1-16)"
    out="${TB_CACHE}/guest/${GUEST_KVER}/initrd-${key}.gz"
    if [[ -s "${out}" ]]; then
        ok "guest initramfs (cached, ${out##*/})"
    else
        step "building the guest initramfs (busybox-static + /init)"
        stage="$(mktemp -d)"
        mkdir -p "${stage}"/{bin,dev,proc,sys,tmp}
        cp "${busybox}" "${stage}/bin/busybox"
        install -m 0755 "${init}" "${stage}/init"
        mknod -m 0600 "${stage}/dev/console" c 5 1
        (cd "${stage}" && find . -print0 | LC_ALL=C sort -z \
            | cpio --null --create --format=newc --owner=0:0 --quiet) | gzip -9 -n >"${out}.tmp"
        mv -f "${out}.tmp" "${out}"
        rm -rf "${stage}"
        ok "guest initramfs built: ${out}"
    fi
    GUEST_INITRD="${out}"
}

guest_artifacts() {
    guest_kernel
    guest_initrd
}
