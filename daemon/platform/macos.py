"""macOS: pmset, ioreg, caffeinate, osascript notifications and Full Disk Access (TCC).

Importable on any OS so the pure parts (text parsers, message and argv
builders) are tested everywhere; only the functions that run a command need a Mac.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from daemon.platform.base import AccessProblem, Runner, basic_problem, other_problem, permission_problem, probe_folder

log = logging.getLogger("whisperd.platform")

FULL_DISK_ACCESS_URL = "x-apple.systempreferences:com.apple.preference.security?Privacy_AllFiles"
_TIMEOUT = 10


# --------------------------------------------------------------------------- parsers (pure)

_DRAWING = re.compile(r"Now drawing from '([^']+)'")
_HID_IDLE = re.compile(r'"HIDIdleTime"\s*=\s*(\d+)')


def parse_pmset_batt(text: str) -> bool | None:
    """``pmset -g batt`` → True on AC power, False on battery or UPS, None if unreadable."""
    m = _DRAWING.search(text)
    if not m:
        return None
    source = m.group(1).lower()
    if source.startswith("ac"):
        return True
    if "battery" in source or "ups" in source:
        return False
    return None


def parse_hid_idle(text: str) -> float | None:
    """``ioreg -c IOHIDSystem`` → seconds since the last keyboard/mouse input (HIDIdleTime is in ns)."""
    m = _HID_IDLE.search(text)
    return int(m.group(1)) / 1e9 if m else None


# --------------------------------------------------------------------------- probes


def _output(argv: list[str], run: Runner) -> str | None:
    try:
        proc = run(argv, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("%s failed: %s", argv[0], exc, extra={"action": "platform.probe_failed"})
        return None
    return proc.stdout if proc.returncode == 0 else None


def on_ac_power(run: Runner = subprocess.run) -> bool | None:
    text = _output(["pmset", "-g", "batt"], run)
    return parse_pmset_batt(text) if text is not None else None


def oom_kills() -> None:
    """Unknown on macOS (jetsam keeps no count a user process can read): a worker killed by
    SIGKILL stays evidence against its files, as the out-of-memory kill it may have been."""
    return None


def idle_seconds(run: Runner = subprocess.run) -> float | None:
    text = _output(["ioreg", "-c", "IOHIDSystem"], run)
    return parse_hid_idle(text) if text is not None else None


def pmset_therm(run: Runner = subprocess.run) -> str | None:
    """The text of ``pmset -g therm``, or None when it cannot be run."""
    return _output(["pmset", "-g", "therm"], run)


# --------------------------------------------------------------------------- sleep


class Caffeinate:
    """Runs ``caffeinate -i -w <our pid>`` while started: no idle sleep, and it ends with us."""

    def __init__(self, *, popen: Callable[..., Any] = subprocess.Popen, pid: int | None = None) -> None:
        self._popen = popen
        self._pid = pid if pid is not None else os.getpid()
        self._proc: Any = None

    @property
    def argv(self) -> list[str]:
        return ["caffeinate", "-i", "-w", str(self._pid)]

    @property
    def active(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.active:
            return
        try:
            self._proc = self._popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        except OSError as exc:
            self._proc = None
            log.warning("could not start caffeinate: %s", exc, extra={"action": "power.keep_awake_failed"})
            return
        log.debug("keeping the Mac awake", extra={"action": "power.keep_awake"})

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.debug("allowing sleep again", extra={"action": "power.allow_sleep"})

    def __enter__(self) -> "Caffeinate":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- notifications


def applescript_string(text: str) -> str:
    """``text`` as an AppleScript string literal: backslashes and quotes escaped, control characters as spaces."""
    clean = "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in text)
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def osascript_argv(title: str, message: str) -> list[str]:
    script = f"display notification {applescript_string(message)} with title {applescript_string(title)}"
    return ["osascript", "-e", script]


class OsascriptSender:
    """Posts a Notification Center banner through ``osascript``; never raises."""

    def __init__(self, run: Runner = subprocess.run) -> None:
        self._run = run

    def __call__(self, title: str, message: str) -> bool:
        try:
            proc = self._run(osascript_argv(title, message), capture_output=True, text=True, timeout=_TIMEOUT, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("osascript failed: %s", exc, extra={"action": "notify.failed"})
            return False
        return proc.returncode == 0


# --------------------------------------------------------------------------- Full Disk Access


def responsible_binary(python: str | None = None) -> str:
    """The file macOS asks about: the venv's python with its symlinks resolved."""
    return os.path.realpath(python or sys.executable)


def explain_access_error(path: Path, exc: OSError, *, python: str | None = None) -> AccessProblem:
    basic = basic_problem(path, exc)
    if basic:
        return basic
    if exc.errno == errno.EPERM:
        binary = responsible_binary(python)
        return AccessProblem(
            path,
            "privacy",
            f"macOS blocked access to {path} (Operation not permitted): whisperd needs Full Disk Access.",
            "Open System Settings → Privacy & Security → Full Disk Access, click +, press Cmd+Shift+G, "
            f"enter {binary}, add it and switch it on; then run: whisperd agent restart. "
            f"Shortcut to that settings pane: open '{FULL_DISK_ACCESS_URL}'",
            FULL_DISK_ACCESS_URL,
        )
    if exc.errno == errno.EACCES:
        return permission_problem(path, exc)
    return other_problem(path, exc)


def check_folder_access(path: Path, *, python: str | None = None, **probes: Any) -> AccessProblem | None:
    """None when ``path`` can be listed and written; otherwise what is wrong and how to fix it.

    ``probes`` may replace ``listdir``, ``open_``, ``close`` and ``unlink`` (see probe_folder).
    """
    exc = probe_folder(Path(path), **probes)
    return explain_access_error(Path(path), exc, python=python) if exc else None
