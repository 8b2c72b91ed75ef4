"""The one way a remote command line is built: an argument list, quoted once for sh.

The remote ``sshd`` hands the command line to the user's login shell (``sh -c``), so
every argument is quoted with :func:`shlex.join`; nothing is ever pasted into a shell
line with string formatting. The SSH user's login shell must be a POSIX shell.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence


def quote_argv(argv: Sequence[str]) -> str:
    """The POSIX shell command line that runs ``argv`` exactly, each element one argument.

    Raises ValueError for an empty argv, a non-string element or a NUL character (which
    no argument of a process can hold). A bare ``str`` is refused as well: it would be
    split into characters.
    """
    if isinstance(argv, str | bytes):
        raise ValueError("argv must be a sequence of strings, not a single string")
    if not argv:
        raise ValueError("argv must not be empty")
    for position, argument in enumerate(argv):
        if not isinstance(argument, str):
            raise ValueError(f"argv[{position}] must be a string, not {type(argument).__name__}")
        if "\x00" in argument:
            raise ValueError(f"argv[{position}] contains a NUL character")
    if not argv[0]:
        raise ValueError("argv[0] (the program) must not be empty")
    return shlex.join(argv)
