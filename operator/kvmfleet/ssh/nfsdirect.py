"""NFS without a mount (nfsAccess Direct): remove, rename, chmod files; capacity (libnfs).

QEMU and qemu-img reach an NFS export themselves through libnfs (`nfs://` URLs), so a
host needs no kernel NFS client. Creating images works with qemu-img alone; removing
them and reading the export's size does not, so a small FIXED Python program calls the
same libnfs library QEMU uses (ctypes, no extra package). It is passed as one argv
element and the URL as another: nothing of the URL is ever interpreted by a shell.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from kvmfleet.domain.storage_urls import StorageKind, StorageURL

_PROGRAM = r"""
import ctypes, ctypes.util, json, sys
op, url = sys.argv[1], sys.argv[2]
lib = ctypes.CDLL(ctypes.util.find_library("nfs") or "libnfs.so.13")
class Url(ctypes.Structure):
    _fields_ = [("server", ctypes.c_char_p), ("path", ctypes.c_char_p), ("file", ctypes.c_char_p)]
lib.nfs_init_context.restype = ctypes.c_void_p
lib.nfs_get_error.restype = ctypes.c_char_p
lib.nfs_get_error.argtypes = [ctypes.c_void_p]
for name in ("nfs_parse_url_full", "nfs_parse_url_dir"):
    getattr(lib, name).restype = ctypes.POINTER(Url)
    getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_char_p]
lib.nfs_mount.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
lib.nfs_unlink.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
lib.nfs_statvfs.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
lib.nfs_stat64.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
lib.nfs_open.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
lib.nfs_creat.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
lib.nfs_read.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p]
lib.nfs_write.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_char_p]
lib.nfs_fsync.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
lib.nfs_close.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
lib.nfs_rename.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
lib.nfs_chmod.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
import errno, os
def errname(rc):
    return {"errno": errno.errorcode.get(-rc, str(rc))}
def kind(mode):
    kinds = {0o100000: "file", 0o040000: "directory", 0o120000: "symlink"}
    return kinds.get(mode & 0o170000, "other")
ctx = lib.nfs_init_context()
def fail(what):
    err = (lib.nfs_get_error(ctx) or b"").decode(errors="replace")
    print(json.dumps({"ok": False, "error": what + ": " + err}))
    sys.exit(3)
by_dir = op in ("statvfs", "backing")
u = (lib.nfs_parse_url_dir if by_dir else lib.nfs_parse_url_full)(ctx, url.encode())
if not u:
    fail("cannot parse the URL")
if lib.nfs_mount(ctx, u.contents.server, u.contents.path) != 0:
    fail("cannot reach the export")
if op == "unlink":
    rc = lib.nfs_unlink(ctx, u.contents.file)
    if rc not in (0, -2):
        fail("cannot remove the file")
    print(json.dumps({"ok": True, "removed": rc == 0}))
elif op == "probe":
    path, limit = u.contents.file, int(sys.argv[3])
    out = {"ok": True, "pool": {"type": "directory"}, "fstype": None}
    st = (ctypes.c_uint64 * 64)()
    rc = lib.nfs_stat64(ctx, path, st)
    out["image"] = {"type": kind(st[2])} if rc == 0 else errname(rc)
    fh = ctypes.c_void_p()
    rc = lib.nfs_open(ctx, path + b".owner.json", os.O_RDONLY, ctypes.byref(fh))
    if rc != 0:
        out["owner"] = errname(rc)
    else:
        buf = ctypes.create_string_buffer(limit)
        count = lib.nfs_read(ctx, fh, limit, buf)
        lib.nfs_close(ctx, fh)
        text = buf.raw[:max(count, 0)].decode("utf-8", "replace")
        out["owner"] = errname(count) if count < 0 else {"text": text}
    print(json.dumps(out))
elif op == "write":
    data, path = sys.stdin.buffer.read(), u.contents.file
    fh = ctypes.c_void_p()
    if lib.nfs_creat(ctx, path + b".tmp", 0o600, ctypes.byref(fh)) != 0:
        fail("cannot create the file")
    if lib.nfs_write(ctx, fh, len(data), data) != len(data) or lib.nfs_fsync(ctx, fh) != 0:
        lib.nfs_close(ctx, fh)
        fail("cannot write the file")
    lib.nfs_close(ctx, fh)
    if lib.nfs_rename(ctx, path + b".tmp", path) != 0:
        fail("cannot rename the file")
    print(json.dumps({"ok": True}))
elif op == "backing":
    class Dirent(ctypes.Structure):
        _fields_ = [("next", ctypes.c_void_p), ("name", ctypes.c_char_p)]
    lib.nfs_opendir.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    lib.nfs_readdir.restype = ctypes.POINTER(Dirent)
    lib.nfs_readdir.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.nfs_closedir.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.nfs_lseek.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    ]
    d = ctypes.c_void_p()
    if lib.nfs_opendir(ctx, b"/", ctypes.byref(d)) != 0:
        fail("cannot list the export")
    names = []
    while True:
        ent = lib.nfs_readdir(ctx, d)
        if not ent:
            break
        names.append(ent.contents.name)
    lib.nfs_closedir(ctx, d)
    found = []
    for name in sorted(n for n in names if n not in (b".", b"..")):
        path = b"/" + name
        st = (ctypes.c_uint64 * 64)()
        rc = lib.nfs_stat64(ctx, path, st)
        if rc != 0:
            found.append({"image": name.decode(errors="replace"), **errname(rc)})
            continue
        if kind(st[2]) != "file":
            continue
        fh = ctypes.c_void_p()
        rc = lib.nfs_open(ctx, path, os.O_RDONLY, ctypes.byref(fh))
        if rc != 0:
            found.append({"image": name.decode(errors="replace"), **errname(rc)})
            continue
        head = ctypes.create_string_buffer(20)
        count = lib.nfs_read(ctx, fh, 20, head)
        backing = None
        if count == 20 and head.raw[:4] == b"QFI\xfb":
            offset = int.from_bytes(head.raw[8:16], "big")
            size = int.from_bytes(head.raw[16:20], "big")
            here = ctypes.c_uint64()
            if offset and 0 < size <= 4096 and lib.nfs_lseek(
                ctx, fh, offset, 0, ctypes.byref(here)
            ) == 0:
                buf = ctypes.create_string_buffer(size)
                got = lib.nfs_read(ctx, fh, size, buf)
                backing = buf.raw[:max(got, 0)].decode("utf-8", "replace")
        lib.nfs_close(ctx, fh)
        if backing:
            found.append({"image": name.decode(errors="replace"), "backing": backing})
    print(json.dumps({"ok": True, "images": found}))
elif op == "chmod":
    if lib.nfs_chmod(ctx, u.contents.file, int(sys.argv[3], 8)) != 0:
        fail("cannot change the file's mode")
    print(json.dumps({"ok": True}))
elif op == "rename":
    target = lib.nfs_parse_url_full(ctx, sys.argv[3].encode())
    if not target:
        fail("cannot parse the target URL")
    if lib.nfs_rename(ctx, u.contents.file, target.contents.file) != 0:
        fail("cannot rename the file")
    print(json.dumps({"ok": True}))
else:
    buf = (ctypes.c_ulong * 20)()
    if lib.nfs_statvfs(ctx, b"/", buf) != 0:
        fail("cannot read the export's size")
    size, free = buf[1] * buf[2], buf[1] * buf[4]
    print(json.dumps({"ok": True, "capacityBytes": size, "availableBytes": free}))
"""


@dataclass(frozen=True)
class NfsResult:
    """What the program reported."""

    ok: bool
    error: str = ""
    removed: bool = False
    capacity_bytes: int | None = None
    available_bytes: int | None = None


def _url(storage: StorageURL, file_name: str | None = None) -> str:
    if storage.kind is not StorageKind.NFS or not storage.server:
        raise ValueError(f"not an NFS storage URL: {storage}")
    path = storage.path.rstrip("/")
    return (
        f"nfs://{storage.server}{path}/{file_name}"
        if file_name
        else f"nfs://{storage.server}{path}"
    )


def unlink_argv(storage: StorageURL, file_name: str) -> list[str]:
    """argv that removes one file from the export (already gone counts as done)."""
    _plain(file_name)
    return ["python3", "-c", _PROGRAM, "unlink", _url(storage, file_name)]


def probe_argv(storage: StorageURL, file_name: str, limit: int) -> list[str]:
    """argv printing the image's type (or errno) and its owner record (the export answered)."""
    _plain(file_name)
    return ["python3", "-c", _PROGRAM, "probe", _url(storage, file_name), str(limit)]


def write_argv(storage: StorageURL, file_name: str) -> list[str]:
    """argv that atomically replaces one file of the export with its stdin."""
    _plain(file_name)
    return ["python3", "-c", _PROGRAM, "write", _url(storage, file_name)]


def rename_argv(storage: StorageURL, file_name: str, new_name: str) -> list[str]:
    """argv that renames one file of the export to another name in the same directory."""
    _plain(file_name)
    _plain(new_name)
    return ["python3", "-c", _PROGRAM, "rename", _url(storage, file_name), _url(storage, new_name)]


def backing_argv(storage: StorageURL) -> list[str]:
    """argv listing, for each qcow2 image of the export, the backing file its header names
    (the same JSON as :func:`kvmfleet.ssh.diskprobe.backing_argv`)."""
    return ["python3", "-c", _PROGRAM, "backing", _url(storage)]


def chmod_argv(storage: StorageURL, file_name: str, mode: int) -> list[str]:
    """argv that sets one file's permission bits (``mode`` at most 0o777)."""
    _plain(file_name)
    if not 0 <= mode <= 0o777:
        raise ValueError(f"not a permission mode: {mode:o}")
    return ["python3", "-c", _PROGRAM, "chmod", _url(storage, file_name), f"{mode:o}"]


def _plain(file_name: str) -> None:
    if "/" in file_name or file_name in ("", ".", ".."):
        raise ValueError(f"not a plain file name: {file_name!r}")


def statvfs_argv(storage: StorageURL) -> list[str]:
    """argv that reports the export's capacity and free space."""
    return ["python3", "-c", _PROGRAM, "statvfs", _url(storage)]


def parse(stdout: str) -> NfsResult:
    """Read the program's one JSON line."""
    try:
        data = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return NfsResult(ok=False, error=f"unexpected output: {stdout[:200]!r}")
    return NfsResult(
        ok=bool(data.get("ok")),
        error=str(data.get("error", "")),
        removed=bool(data.get("removed", False)),
        capacity_bytes=data.get("capacityBytes"),
        available_bytes=data.get("availableBytes"),
    )
