"""The platform, chosen once at import (like watchdog's Observer): macOS or everything else (Linux).

    service_manager      Launchd() or Systemd(): install/uninstall/status/restart the background service
    keep_awake()         a KeepAwake: start() while jobs run, stop() when the queue is empty; also a context manager
    check_folder_access  path → AccessProblem | None (on macOS, explains Full Disk Access)
    on_ac_power()        True / False / None (unknown, or no battery: treat as AC)
    idle_seconds()       seconds since the last keyboard/mouse input, or None where unknown
    oom_kills()          processes the out-of-memory killer ended since boot, or None where unknown
    notify_sender        callable(title, message) -> bool; never raises
"""

from __future__ import annotations

import sys

from daemon.agent import ServiceManager
from daemon.platform.base import AccessProblem, KeepAwake, NoKeepAwake

IS_MACOS = sys.platform == "darwin"

if IS_MACOS:
    from daemon.platform import macos as _impl
    from daemon.platform.launchd import Launchd

    service_manager: ServiceManager = Launchd()
    notify_sender = _impl.OsascriptSender()

    def keep_awake() -> KeepAwake:
        return _impl.Caffeinate()

else:
    from daemon.platform import linux as _impl  # type: ignore[no-redef]
    from daemon.platform.systemd import Systemd

    service_manager = Systemd()
    notify_sender = _impl.NotifySendSender()  # type: ignore[assignment]

    def keep_awake() -> KeepAwake:
        return _impl.keep_awake()


check_folder_access = _impl.check_folder_access
on_ac_power = _impl.on_ac_power
idle_seconds = _impl.idle_seconds
oom_kills = _impl.oom_kills

__all__ = [
    "IS_MACOS",
    "AccessProblem",
    "KeepAwake",
    "NoKeepAwake",
    "check_folder_access",
    "idle_seconds",
    "keep_awake",
    "notify_sender",
    "on_ac_power",
    "oom_kills",
    "service_manager",
]
