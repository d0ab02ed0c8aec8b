"""systemd (Linux): whisperd as a user unit, driven with ``systemctl --user``."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Mapping

from daemon.agent import (
    EXIT_TIMEOUT_SECONDS,
    NICE,
    THROTTLE_SECONDS,
    UNIT_NAME,
    Runner,
    ServiceError,
    ServiceStatus,
    absolute_path,
    config_file,
    failure_text,
    file_matches,
    find_whisperd,
    run_command,
    write_service_file,
)
from daemon.config import Config

log = logging.getLogger("whisperd.agent")


def systemd_unit_path(home: Path, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    xdg = env.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else home / ".config"
    return base / "systemd" / "user" / UNIT_NAME


_PLAIN_ARG = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


def _unit_escape(text: str) -> str:
    """Escape systemd's specifier (%) and variable ($) expansion."""
    return text.replace("%", "%%").replace("$", "$$")


def _exec_arg(arg: str) -> str:
    arg = _unit_escape(arg)
    if _PLAIN_ARG.fullmatch(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(*, executable: Path, config: Path) -> str:
    """The systemd user unit as text (systemd has no serializer; every value is escaped)."""
    exe = absolute_path("whisperd executable", executable)
    conf = absolute_path("config file", config)
    exec_start = " ".join(_exec_arg(a) for a in (str(exe), "run", "--config", str(conf)))
    lines = [
        "[Unit]",
        "Description=whisperd: transcribe recordings dropped into watched folders",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exec_start}",
        f"WorkingDirectory={_unit_escape(str(conf.parent))}",
        "Restart=on-failure",
        f"RestartSec={THROTTLE_SECONDS}",
        f"Nice={NICE}",
        "IOSchedulingClass=idle",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={EXIT_TIMEOUT_SECONDS}",
        "Environment=PYTHONUNBUFFERED=1",
        "Environment=PYTHONIOENCODING=utf-8",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


NO_USER_BUS = (
    "systemd has no user session here (no user bus), so the service cannot be managed: "
    "log in to a normal session, or run `loginctl enable-linger $USER` once and log in again"
)


NO_SYSTEMCTL = (
    "systemctl was not found: this system does not run systemd, so whisperd cannot install itself "
    "as a service; run `whisperd run --config FILE` under your own supervisor instead"
)


def _no_bus(proc: "subprocess.CompletedProcess[str]") -> bool:
    err = (proc.stderr or "").lower()
    return "failed to connect to bus" in err or "user scope bus" in err or "dbus_session_bus_address" in err


class Systemd:
    """Manages ``~/.config/systemd/user/whisperd.service`` with ``systemctl --user``."""

    name = "systemd"

    def __init__(
        self,
        *,
        run: Runner = subprocess.run,
        home: Path | None = None,
        env: Mapping[str, str] | None = None,
        which: Callable[[str], str | None] = shutil.which,
        executable: Path | None = None,
    ) -> None:
        self._executable = executable
        self._run = run
        self._home = home
        self._env = env
        self._which = which

    @property
    def home(self) -> Path:
        return self._home or Path.home()

    def path(self, cfg: Config) -> Path:
        return systemd_unit_path(self.home, self._env)

    def render(self, cfg: Config, executable: Path | None = None) -> bytes:
        exe = executable or self._executable or find_whisperd()
        return render_unit(executable=exe, config=config_file(cfg)).encode()

    def _systemctl(self, *args: str, check: bool = True) -> "subprocess.CompletedProcess[str]":
        if not self._which("systemctl"):
            raise ServiceError(NO_SYSTEMCTL)
        proc = run_command(self._run, ["systemctl", "--user", *args])
        if _no_bus(proc):
            raise ServiceError(NO_USER_BUS)
        if check and proc.returncode != 0:
            raise ServiceError(f"systemctl --user {' '.join(args)} failed: {failure_text(proc)}")
        return proc

    def install(self, cfg: Config, executable: Path | None = None) -> Path:
        data = self.render(cfg, executable)
        was_active = self._systemctl("is-active", UNIT_NAME, check=False).returncode == 0
        path = self.path(cfg)
        write_service_file(path, data)
        self._systemctl("daemon-reload")
        self._systemctl("enable", "--now", UNIT_NAME)
        if was_active:
            self._systemctl("restart", UNIT_NAME)
        log.info("installed %s", path, extra={"action": "agent.installed"})
        return path

    def uninstall(self, cfg: Config) -> bool:
        path = self.path(cfg)
        if not path.exists():
            return False
        self._systemctl("disable", "--now", UNIT_NAME)
        path.unlink()
        self._systemctl("daemon-reload")
        return True

    def restart(self, cfg: Config) -> None:
        self._systemctl("restart", UNIT_NAME)

    def status(self, cfg: Config) -> ServiceStatus:
        path = self.path(cfg)
        installed = path.exists()
        current = file_matches(path, lambda: self.render(cfg)) if installed else None
        try:
            enabled = self._systemctl("is-enabled", UNIT_NAME, check=False).stdout.strip()
            active = self._systemctl("is-active", UNIT_NAME, check=False).stdout.strip()
        except ServiceError as exc:
            return ServiceStatus(self.name, path, installed, None, None, current=current, detail=str(exc))
        return ServiceStatus(
            self.name,
            path,
            installed,
            enabled == "enabled",
            active == "active",
            current=current,
            detail=f"{enabled or 'unknown'}, {active or 'unknown'}",
        )
