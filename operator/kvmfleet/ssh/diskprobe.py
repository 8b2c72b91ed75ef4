"""Disk files on a host's own filesystem (dir pools, NFS mounted): probe, owner records, backing.

One small FIXED Python program, passed as one argv element with its paths as others
(nothing is ever interpreted by a shell), does in a single SSH command what a disk step
needs to decide: is the pool directory a directory, which filesystem is mounted on it,
does the image exist (``lstat``: a symlink is not an image), and the owner record's text.
Errors are reported by errno name, so only ENOENT can be read as "absent"
(:func:`kvmfleet.domain.diskstate.judge_probe`). It also writes an owner record
atomically (temporary file, fsync, rename) and lists the backing file each qcow2 image
of a directory names (read from the qcow2 header, without opening any chain).
"""

from __future__ import annotations

import json
from typing import Any

from kvmfleet.domain.diskstate import OWNER_RECORD_MAX_BYTES
from kvmfleet.domain.validation import validate_absolute_path

_PROGRAM = r"""
import errno, json, os, stat, sys
def kind(mode):
    if stat.S_ISREG(mode): return "file"
    if stat.S_ISDIR(mode): return "directory"
    if stat.S_ISLNK(mode): return "symlink"
    return "other"
def err(e):
    return {"errno": errno.errorcode.get(e.errno, str(e.errno))}
op = sys.argv[1]
if op == "probe":
    pool, image, owner, limit = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    out = {}
    try:
        out["pool"] = {"type": kind(os.stat(pool).st_mode)}
    except OSError as e:
        out["pool"] = err(e)
    fstype, real = None, os.path.realpath(pool)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if left.split()[4] == real:
                    fstype = right.split()[0]
    except (OSError, IndexError):
        pass
    out["fstype"] = fstype
    try:
        out["image"] = {"type": kind(os.lstat(image).st_mode)}
    except OSError as e:
        out["image"] = err(e)
    try:
        if not stat.S_ISREG(os.lstat(owner).st_mode):
            out["owner"] = {"errno": "EISDIR"}
        else:
            with open(owner, "rb") as f:
                out["owner"] = {"text": f.read(limit).decode("utf-8", "replace")}
    except OSError as e:
        out["owner"] = err(e)
    print(json.dumps(out))
elif op == "write":
    path = sys.argv[2]
    data = sys.stdin.buffer.read()
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    print(json.dumps({"ok": True}))
elif op == "backing":
    directory, found = sys.argv[2], []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            with open(path, "rb") as f:
                head = f.read(20)
                if len(head) < 20 or head[:4] != b"QFI\xfb":
                    continue
                offset = int.from_bytes(head[8:16], "big")
                size = int.from_bytes(head[16:20], "big")
                if offset and 0 < size <= 4096:
                    f.seek(offset)
                    backing = f.read(size).decode("utf-8", "replace")
                    found.append({"image": name, "backing": backing})
        except OSError as e:
            found.append({"image": name, "errno": errno.errorcode.get(e.errno, str(e.errno))})
    print(json.dumps({"ok": True, "images": found}))
"""


def probe_argv(pool: str, image: str, owner: str) -> list[str]:
    """argv printing one JSON object: pool, fstype, image, owner (see the module doc)."""
    return [
        "python3",
        "-c",
        _PROGRAM,
        "probe",
        validate_absolute_path(pool, "pool"),
        validate_absolute_path(image, "image"),
        validate_absolute_path(owner, "owner record"),
        str(OWNER_RECORD_MAX_BYTES),
    ]


def write_argv(path: str) -> list[str]:
    """argv that atomically replaces ``path`` with its stdin."""
    return ["python3", "-c", _PROGRAM, "write", validate_absolute_path(path, "path")]


def backing_argv(directory: str) -> list[str]:
    """argv listing, for each qcow2 image in ``directory``, the backing file it names."""
    return ["python3", "-c", _PROGRAM, "backing", validate_absolute_path(directory, "directory")]


def parse(stdout: str) -> dict[str, Any]:
    """The program's JSON line; ``{"error": ...}`` when it printed something else."""
    try:
        data = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"unexpected output: {stdout[:200]!r}"}
    return data if isinstance(data, dict) else {"error": f"unexpected output: {stdout[:200]!r}"}
