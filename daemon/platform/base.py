"""Small values and interfaces shared by the macOS and Linux implementations.

Everything that touches the outside world takes it as a parameter (``run``,
``listdir``, ``open_``), with the real function as the default, so tests can
hand in a fake instead of needing a Mac.
"""

from __future__ import annotations

import errno
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

Runner = Callable[..., "subprocess.CompletedProcess[str]"]
"""Signature of ``subprocess.run``: called with an argument list, never a shell string."""


@dataclass(frozen=True)
class AccessProblem:
    """Why whisperd cannot use a folder, and what the user should do about it."""

    path: Path
    kind: str  # "missing" | "not_a_folder" | "privacy" (macOS TCC) | "permission" | "error"
    message: str
    fix: str
    link: str | None = None  # a URL that opens the right settings pane, where there is one

    def __str__(self) -> str:
        return f"{self.message} {self.fix}".strip()


class KeepAwake(Protocol):
    """Keeps the machine from idle-sleeping while jobs run. Usable as a context manager."""

    @property
    def active(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def __enter__(self) -> "KeepAwake": ...

    def __exit__(self, *exc: object) -> None: ...


class NoKeepAwake:
    """A KeepAwake that does nothing: for platforms without a sleep inhibitor, and for tests."""

    def __init__(self) -> None:
        self._active = False

    @property
    def active(self) -> bool:
        return self._active

    def start(self) -> None:
        self._active = True

    def stop(self) -> None:
        self._active = False

    def __enter__(self) -> "NoKeepAwake":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


PROBE_PREFIX = ".whisperd-access-"
"""Name prefix of the short-lived file written to test a folder; watchers should ignore it."""


def probe_folder(
    path: Path,
    *,
    listdir: Callable[[Any], Any] = os.listdir,
    open_: Callable[..., int] = os.open,
    close: Callable[[int], None] = os.close,
    unlink: Callable[[Any], None] = os.unlink,
) -> OSError | None:
    """List ``path``, then create and delete a probe file in it.

    Returns the first OSError met (with ``filename`` set), or None when the
    folder can be read and written.
    """
    try:
        listdir(path)
        probe = Path(path) / f"{PROBE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        fd = open_(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        close(fd)
        unlink(probe)
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        return exc
    return None


def basic_problem(path: Path, exc: OSError) -> AccessProblem | None:
    """The explanations that are the same everywhere: missing folder, not a folder."""
    if exc.errno == errno.ENOENT:
        return AccessProblem(
            path,
            "missing",
            f"The folder {path} does not exist.",
            f"Create it (mkdir -p '{path}') or fix the path in the config file.",
        )
    if exc.errno == errno.ENOTDIR:
        return AccessProblem(
            path,
            "not_a_folder",
            f"{path} is not a folder.",
            "Point the config at a folder, not a file.",
        )
    return None


def permission_problem(path: Path, exc: OSError) -> AccessProblem:
    """Plain Unix permissions: the user running whisperd may not read or write here."""
    try:
        import pwd

        user = pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):  # pragma: no cover - every Unix has pwd
        user = str(os.geteuid())
    return AccessProblem(
        path,
        "permission",
        f"whisperd (running as {user}) may not read and write {path}: {exc.strerror or exc}.",
        f"Give that user access, for example: chown {user} '{path}' && chmod u+rwx '{path}'.",
    )


def other_problem(path: Path, exc: OSError) -> AccessProblem:
    return AccessProblem(path, "error", f"whisperd could not use {path}: {exc.strerror or exc}.", "Check the disk and the path.")
