"""Run whisperd in the background: what the service managers share.

The managers themselves live in the platform package: ``platform/launchd.py`` (a LaunchAgent on
macOS) and ``platform/systemd.py`` (a systemd user unit on Linux). Rendering is pure (label and
absolute paths in, plist dict / unit text out). Installing writes the file atomically and drives
``launchctl`` or ``systemctl --user`` through an injected ``run`` (``subprocess.run`` by default),
always with an argument list, never a shell.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from daemon import files
from daemon.config import Config
from daemon.errors import WhisperdError

log = logging.getLogger("whisperd.agent")

Runner = Callable[..., "subprocess.CompletedProcess[str]"]

PATH_DIRS = ("/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")
UNIT_NAME = "whisperd.service"
THROTTLE_SECONDS = 30
EXIT_TIMEOUT_SECONDS = 20
NICE = 10


class ServiceError(WhisperdError):
    """The background service could not be installed or controlled."""


@dataclass(frozen=True)
class ServiceStatus:
    manager: str  # "launchd" | "systemd"
    path: Path  # where the plist / unit lives
    installed: bool  # the file exists
    loaded: bool | None  # launchd: bootstrapped; systemd: enabled. None: could not ask
    running: bool | None  # a process is running now. None: could not ask
    pid: int | None = None
    current: bool | None = None  # the file matches what `agent install` would write now
    detail: str = ""


# --------------------------------------------------------------------------- paths


def find_whisperd(python: str | None = None, which: Callable[[str], str | None] = shutil.which) -> Path:
    """The absolute path of the ``whisperd`` command: next to the running python (a venv), else on PATH.

    Symlinks are kept (``abspath``, not ``realpath``), so the service keeps
    pointing at the venv or Homebrew link rather than a versioned file behind it.
    """
    sibling = Path(os.path.abspath(python or sys.executable)).parent / "whisperd"
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return sibling
    found = which("whisperd")
    if found:
        return Path(os.path.abspath(found))
    raise ServiceError(
        f"the whisperd command was found neither next to {python or sys.executable} nor on PATH; "
        "install the package into this environment (pip install -e .) or pass --executable"
    )


def absolute_path(name: str, p: Path) -> Path:
    if not Path(p).is_absolute():
        raise ServiceError(f"the {name} path {str(p)!r} must be absolute for the background service")
    if "\n" in str(p) or "\r" in str(p):
        raise ServiceError(f"the {name} path {str(p)!r} contains a line break, which a service file cannot hold")
    return Path(p)


def config_file(cfg: Config) -> Path:
    if cfg.path is None:
        raise ServiceError("the configuration was not read from a file, so the service has no --config to pass")
    return Path(os.path.abspath(cfg.path))


# --------------------------------------------------------------------------- rendering (pure)


# --------------------------------------------------------------------------- files


def write_service_file(path: Path, data: bytes) -> None:
    """The plist or unit, replaced atomically, readable by all and writable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomic(path.parent, path.name, data, replace=True, mode=0o644)


def read_bytes_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


# --------------------------------------------------------------------------- managers


def run_command(run: Runner, argv: list[str]) -> "subprocess.CompletedProcess[str]":
    log.debug("running %s", " ".join(argv), extra={"action": "agent.command"})
    try:
        return run(argv, capture_output=True, text=True, check=False, timeout=60)
    except FileNotFoundError:
        raise ServiceError(f"{argv[0]} was not found on this system") from None
    except subprocess.TimeoutExpired:
        raise ServiceError(f"{' '.join(argv)} did not answer within 60 seconds") from None


def failure_text(proc: "subprocess.CompletedProcess[str]") -> str:
    text = (proc.stderr or proc.stdout or "").strip()
    return text or f"exit status {proc.returncode}"


def file_matches(path: Path, render: Callable[[], bytes]) -> bool | None:
    try:
        wanted = render()
    except ServiceError:
        return None
    return read_bytes_or_none(path) == wanted


class ServiceManager(Protocol):
    """What ``whisperd agent`` and ``whisperd doctor`` ask of launchd or systemd."""

    name: str

    def path(self, cfg: Config) -> Path: ...

    def render(self, cfg: Config, executable: Path | None = None) -> bytes: ...

    def install(self, cfg: Config, executable: Path | None = None) -> Path: ...

    def uninstall(self, cfg: Config) -> bool: ...

    def restart(self, cfg: Config) -> None: ...

    def status(self, cfg: Config) -> ServiceStatus: ...
