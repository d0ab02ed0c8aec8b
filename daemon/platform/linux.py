"""Linux: battery through psutil, notify-send notifications, plain permission checks.

Sleep inhibition is a no-op here (a server does not idle-sleep under a user
service); the interface is the same as on macOS.
"""

from __future__ import annotations

import errno
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import psutil

from daemon.platform.base import AccessProblem, NoKeepAwake, Runner, basic_problem, other_problem, permission_problem, probe_folder

log = logging.getLogger("whisperd.platform")

THERMAL_ROOT = Path("/sys/class/thermal")


def on_ac_power(sensors_battery: Callable[[], Any] = psutil.sensors_battery) -> bool | None:
    """True/False from the battery's ``power_plugged``; None when there is no battery (or it is not reported)."""
    try:
        battery = sensors_battery()
    except (OSError, RuntimeError, NotImplementedError):
        return None
    if battery is None or battery.power_plugged is None:
        return None
    return bool(battery.power_plugged)


def oom_kills(vmstat: Path = Path("/proc/vmstat")) -> int | None:
    """How many processes the kernel's out-of-memory killer has ended since boot, or None where
    unknown: a worker found dead by SIGKILL with this unchanged was killed by someone, not for
    the memory it took."""
    try:
        for line in vmstat.read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def idle_seconds() -> float | None:
    """Not known for a background service on Linux (no portable, session-independent source)."""
    return None


def keep_awake() -> NoKeepAwake:
    return NoKeepAwake()


def notify_send_argv(title: str, message: str) -> list[str]:
    # "--" stops option parsing, so a message that starts with "-" is still text.
    return ["notify-send", "--app-name=whisperd", "--", title, message]


class NotifySendSender:
    """Posts a desktop notification with ``notify-send`` when it is installed; otherwise does nothing."""

    def __init__(self, run: Runner = subprocess.run, which: Callable[[str], str | None] = shutil.which) -> None:
        self._run = run
        self._which = which

    def __call__(self, title: str, message: str) -> bool:
        if not self._which("notify-send"):
            return False
        try:
            proc = self._run(notify_send_argv(title, message), capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("notify-send failed: %s", exc, extra={"action": "notify.failed"})
            return False
        return proc.returncode == 0


def explain_access_error(path: Path, exc: OSError) -> AccessProblem:
    basic = basic_problem(path, exc)
    if basic:
        return basic
    if exc.errno in (errno.EACCES, errno.EPERM):
        return permission_problem(path, exc)
    return other_problem(path, exc)


def check_folder_access(path: Path, **probes: Any) -> AccessProblem | None:
    """None when ``path`` can be listed and written; otherwise what is wrong and how to fix it."""
    exc = probe_folder(Path(path), **probes)
    return explain_access_error(Path(path), exc) if exc else None


def thermal_zone_temps(root: Path = THERMAL_ROOT) -> dict[str, float]:
    """Readable ``thermal_zone*/temp`` values in °C, by zone name."""
    temps: dict[str, float] = {}
    try:
        zones = sorted(root.glob("thermal_zone*"))
    except OSError:
        return temps
    for zone in zones:
        try:
            temps[zone.name] = int((zone / "temp").read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
    return temps
