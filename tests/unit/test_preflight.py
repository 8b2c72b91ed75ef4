"""The test command's install list and preflight (hack/lib/deps.sh, hack/lib/packages.tsv)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPS = REPO / "hack" / "lib" / "deps.sh"
TABLE = REPO / "hack" / "lib" / "packages.tsv"


def deps(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", str(DEPS), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def path_without(tmp_path: Path, *hidden: str) -> str:
    """A directory of symlinks to every command on PATH except `hidden`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory or not Path(directory).is_dir():
            continue
        for entry in Path(directory).iterdir():
            link = bin_dir / entry.name
            if entry.name in hidden or link.exists() or link.is_symlink():
                continue
            if entry.is_file() and os.access(entry, os.X_OK):
                link.symlink_to(entry)
    return str(bin_dir)


def test_preflight_fails_fast_naming_the_package_of_a_missing_command(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=path_without(tmp_path, "xmllint"))
    started = time.monotonic()
    result = deps("preflight", env=env)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert took < 5, f"the preflight took {took:.1f} s"
    assert "xmllint (Debian package libxml2-utils)" in result.stderr
    assert "apt-get install" in result.stderr and "libxml2-utils" in result.stderr


def test_preflight_names_only_what_is_missing(tmp_path: Path) -> None:
    """Hiding a second command adds exactly that one (and its package) to the report."""
    base = deps("preflight", env=dict(os.environ, PATH=path_without(tmp_path / "a", "xmllint")))
    more = deps(
        "preflight", env=dict(os.environ, PATH=path_without(tmp_path / "b", "xmllint", "virsh"))
    )
    added = set(more.stderr.splitlines()) - set(base.stderr.splitlines())
    assert any("virsh (Debian package libvirt-clients)" in line for line in added), more.stderr
    assert not any("xmllint" in line for line in added)


def test_every_command_the_tests_run_has_a_package_to_install() -> None:
    rows = [line.split() for line in TABLE.read_text().splitlines() if line and line[0] != "#"]
    checks = {(scope, check): pkg for scope, pkg, check in rows}
    for command, package in {
        "xmllint": "libxml2-utils",  # virt-xml-validate (the domain XML golden tests)
        "virt-xml-validate": "libvirt-clients",
        "virsh": "libvirt-clients",
        "ssh-keygen": "openssh-client",
        "go": "golang-go",  # Go's regexp in tests/unit/test_crds.py
        "ip": "iproute2",
    }.items():
        assert checks.get(("test", command)) == package, command
    assert checks.get(("bench", "virt-install")) == "virtinst"
    installed = deps("packages").stdout.split()
    assert {"libxml2-utils", "libvirt-daemon-system", "etcd-server", "passwd"} <= set(installed)
    assert "virtinst" not in installed  # only the benchmark installs it (deps.sh install bench)
