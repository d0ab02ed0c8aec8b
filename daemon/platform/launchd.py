"""launchd (macOS): whisperd as a LaunchAgent in the user's gui domain, driven with ``launchctl``."""

from __future__ import annotations

import logging
import os
import plistlib
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from daemon.agent import (
    EXIT_TIMEOUT_SECONDS,
    NICE,
    PATH_DIRS,
    THROTTLE_SECONDS,
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


def launch_agent_path(label: str, home: Path) -> Path:
    return home / "Library" / "LaunchAgents" / f"{label}.plist"


def launchd_log_dir(home: Path) -> Path:
    return home / "Library" / "Logs" / "whisperd"


def launchd_job(*, label: str, executable: Path, config: Path, home: Path) -> dict[str, Any]:
    """The LaunchAgent as a dict for plistlib."""
    exe = absolute_path("whisperd executable", executable)
    conf = absolute_path("config file", config)
    logs = launchd_log_dir(absolute_path("home", home))
    path_dirs = list(dict.fromkeys([str(exe.parent), *PATH_DIRS]))
    return {
        "Label": label,
        "ProgramArguments": [str(exe), "run", "--config", str(conf)],
        "WorkingDirectory": str(conf.parent),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": THROTTLE_SECONDS,
        "ExitTimeOut": EXIT_TIMEOUT_SECONDS,
        "ProcessType": "Background",
        "LowPriorityIO": True,
        "Nice": NICE,
        "StandardOutPath": str(logs / "stdout.log"),
        "StandardErrorPath": str(logs / "stderr.log"),
        "EnvironmentVariables": {
            "PATH": ":".join(path_dirs),
            "PYTHONUNBUFFERED": "1",
            "PYTHONIOENCODING": "utf-8",
        },
    }


def render_plist(*, label: str, executable: Path, config: Path, home: Path) -> bytes:
    return plistlib.dumps(launchd_job(label=label, executable=executable, config=config, home=home), sort_keys=False)


class Launchd:
    """Manages ``~/Library/LaunchAgents/<label>.plist`` with ``launchctl`` in the gui/<uid> domain."""

    name = "launchd"

    def __init__(
        self,
        *,
        run: Runner = subprocess.run,
        home: Path | None = None,
        uid: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        executable: Path | None = None,
    ) -> None:
        self._executable = executable
        self._run = run
        self._home = home
        self._uid = uid
        self._sleep = sleep

    @property
    def home(self) -> Path:
        return self._home or Path.home()

    @property
    def domain(self) -> str:
        return f"gui/{self._uid if self._uid is not None else os.getuid()}"

    def target(self, cfg: Config) -> str:
        return f"{self.domain}/{cfg.label}"

    def path(self, cfg: Config) -> Path:
        return launch_agent_path(cfg.label, self.home)

    def render(self, cfg: Config, executable: Path | None = None) -> bytes:
        return render_plist(
            label=cfg.label,
            executable=executable or self._executable or find_whisperd(),
            config=config_file(cfg),
            home=self.home,
        )

    def _print(self, cfg: Config) -> "subprocess.CompletedProcess[str]":
        return run_command(self._run, ["launchctl", "print", self.target(cfg)])

    def install(self, cfg: Config, executable: Path | None = None) -> Path:
        data = self.render(cfg, executable)
        path = self.path(cfg)
        was_loaded = self._print(cfg).returncode == 0
        launchd_log_dir(self.home).mkdir(mode=0o700, parents=True, exist_ok=True)
        write_service_file(path, data)
        if was_loaded:
            run_command(self._run, ["launchctl", "bootout", self.target(cfg)])
        # bootout returns before launchd has finished tearing the old job down; bootstrap then
        # fails with "Input/output error" for a moment, so a reload gets a few tries.
        tries = 5 if was_loaded else 1
        for attempt in range(1, tries + 1):
            proc = run_command(self._run, ["launchctl", "bootstrap", self.domain, str(path)])
            if proc.returncode == 0:
                break
            if attempt == tries:
                hint = ""
                if "domain does not support" in failure_text(proc).lower():
                    hint = (
                        f"; {self.domain} exists only while this user is logged in to the desktop "
                        "(for a headless Mac mini, turn on automatic login)"
                    )
                raise ServiceError(f"launchctl bootstrap {self.domain} {path} failed: {failure_text(proc)}{hint}")
            self._sleep(1.0)
        log.info("installed %s", path, extra={"action": "agent.installed"})
        return path

    def uninstall(self, cfg: Config) -> bool:
        path = self.path(cfg)
        loaded = self._print(cfg).returncode == 0
        if loaded:
            proc = run_command(self._run, ["launchctl", "bootout", self.target(cfg)])
            if proc.returncode != 0:
                raise ServiceError(f"launchctl bootout {self.target(cfg)} failed: {failure_text(proc)}")
        existed = path.exists()
        path.unlink(missing_ok=True)
        return loaded or existed

    def restart(self, cfg: Config) -> None:
        proc = run_command(self._run, ["launchctl", "kickstart", "-k", self.target(cfg)])
        if proc.returncode != 0:
            raise ServiceError(f"launchctl kickstart -k {self.target(cfg)} failed: {failure_text(proc)}")

    def status(self, cfg: Config) -> ServiceStatus:
        path = self.path(cfg)
        installed = path.exists()
        current = file_matches(path, lambda: self.render(cfg)) if installed else None
        try:
            proc = self._print(cfg)
        except ServiceError as exc:
            return ServiceStatus(self.name, path, installed, None, None, current=current, detail=str(exc))
        if proc.returncode != 0:
            return ServiceStatus(self.name, path, installed, False, False, current=current, detail="not loaded")
        state = re.search(r"^\s*state = (\S+)", proc.stdout, re.M)
        pid = re.search(r"^\s*pid = (\d+)", proc.stdout, re.M)
        running = bool(state and state.group(1) == "running")
        return ServiceStatus(
            self.name,
            path,
            installed,
            True,
            running,
            pid=int(pid.group(1)) if pid else None,
            current=current,
            detail=f"state {state.group(1)}" if state else "loaded",
        )
