"""quote_argv: every element reaches the remote program as exactly one, literal argument."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from kvmfleet.ssh.quoting import quote_argv

NASTY = [
    "a;touch /tmp/x",
    "$(touch /tmp/x)",
    "`touch /tmp/x`",
    "a && b || c",
    "line1\nline2",
    "tab\there",
    "../../etc/passwd",
    "..",
    "with space",
    "'single'",
    '"double"',
    "back\\slash",
    "*?[a]{b,c}~",
    "> /tmp/out < /etc/passwd | cat &",
    "#comment",
    "-rf",
    "",
    "ünïcödé ✓",
    "$HOME ${PATH} !!",
]


@pytest.mark.parametrize("argument", NASTY)
def test_round_trips_through_shlex(argument: str) -> None:
    assert shlex.split(quote_argv(["echo", argument])) == ["echo", argument]


def test_a_real_shell_sees_each_element_as_one_literal_argument(tmp_path) -> None:
    marker = tmp_path / "pwned"
    argv = ["printf", "%s\\0", *NASTY, f"$(touch {marker})", f";touch {marker}"]
    out = subprocess.run(["sh", "-c", quote_argv(argv)], capture_output=True, check=True).stdout
    assert out.decode().split("\0")[:-1] == argv[2:]
    assert not marker.exists()


@pytest.mark.parametrize(
    "argv",
    [[], "echo hi", b"echo", ["echo", "a\0b"], ["echo", 1], ["echo", None], [""]],
)
def test_refuses_what_cannot_be_an_argv(argv: object) -> None:
    with pytest.raises(ValueError):
        quote_argv(argv)  # type: ignore[arg-type]


def test_plain_words_stay_readable() -> None:
    assert quote_argv(["ip", "-j", "addr", "show"]) == "ip -j addr show"
