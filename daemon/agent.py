"""Run whisperd in the background: a launchd LaunchAgent on macOS, a systemd user unit on Linux.

Rendering is pure (label and absolute paths in, plist dict / unit text out).
Installing writes the file atomically and drives ``launchctl`` or
``systemctl --user`` through an injected ``run`` (``subprocess.run`` by
default), always with an argument list, never a shell.
"""

from __future__ import annotations

import logging
import os
import plistlib
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

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


def launch_agent_path(label: str, home: Path) -> Path:
    return home / "Library" / "LaunchAgents" / f"{label}.plist"


def launchd_log_dir(home: Path) -> Path:
    return home / "Library" / "Logs" / "whisperd"


def systemd_unit_path(home: Path, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    xdg = env.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else home / ".config"
    return base / "systemd" / "user" / UNIT_NAME


def _absolute(name: str, p: Path) -> Path:
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


def launchd_job(*, label: str, executable: Path, config: Path, home: Path) -> dict[str, Any]:
    """The LaunchAgent as a dict for plistlib."""
    exe = _absolute("whisperd executable", executable)
    conf = _absolute("config file", config)
    logs = launchd_log_dir(_absolute("home", home))
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
    exe = _absolute("whisperd executable", executable)
    conf = _absolute("config file", config)
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


# --------------------------------------------------------------------------- files


def _write_service_file(path: Path, data: bytes) -> None:
    """The plist or unit, replaced atomically, readable by all and writable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomic(path.parent, path.name, data, replace=True, mode=0o644)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


# --------------------------------------------------------------------------- managers


def _call(run: Runner, argv: list[str]) -> "subprocess.CompletedProcess[str]":
    log.debug("running %s", " ".join(argv), extra={"action": "agent.command"})
    try:
        return run(argv, capture_output=True, text=True, check=False, timeout=60)
    except FileNotFoundError:
        raise ServiceError(f"{argv[0]} was not found on this system") from None
    except subprocess.TimeoutExpired:
        raise ServiceError(f"{' '.join(argv)} did not answer within 60 seconds") from None


def _why(proc: "subprocess.CompletedProcess[str]") -> str:
    text = (proc.stderr or proc.stdout or "").strip()
    return text or f"exit status {proc.returncode}"


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
        return _call(self._run, ["launchctl", "print", self.target(cfg)])

    def install(self, cfg: Config, executable: Path | None = None) -> Path:
        data = self.render(cfg, executable)
        path = self.path(cfg)
        was_loaded = self._print(cfg).returncode == 0
        launchd_log_dir(self.home).mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_service_file(path, data)
        if was_loaded:
            _call(self._run, ["launchctl", "bootout", self.target(cfg)])
        # bootout returns before launchd has finished tearing the old job down; bootstrap then
        # fails with "Input/output error" for a moment, so a reload gets a few tries.
        tries = 5 if was_loaded else 1
        for attempt in range(1, tries + 1):
            proc = _call(self._run, ["launchctl", "bootstrap", self.domain, str(path)])
            if proc.returncode == 0:
                break
            if attempt == tries:
                hint = ""
                if "domain does not support" in _why(proc).lower():
                    hint = (
                        f"; {self.domain} exists only while this user is logged in to the desktop "
                        "(for a headless Mac mini, turn on automatic login)"
                    )
                raise ServiceError(f"launchctl bootstrap {self.domain} {path} failed: {_why(proc)}{hint}")
            self._sleep(1.0)
        log.info("installed %s", path, extra={"action": "agent.installed"})
        return path

    def uninstall(self, cfg: Config) -> bool:
        path = self.path(cfg)
        loaded = self._print(cfg).returncode == 0
        if loaded:
            proc = _call(self._run, ["launchctl", "bootout", self.target(cfg)])
            if proc.returncode != 0:
                raise ServiceError(f"launchctl bootout {self.target(cfg)} failed: {_why(proc)}")
        existed = path.exists()
        path.unlink(missing_ok=True)
        return loaded or existed

    def restart(self, cfg: Config) -> None:
        proc = _call(self._run, ["launchctl", "kickstart", "-k", self.target(cfg)])
        if proc.returncode != 0:
            raise ServiceError(f"launchctl kickstart -k {self.target(cfg)} failed: {_why(proc)}")

    def status(self, cfg: Config) -> ServiceStatus:
        path = self.path(cfg)
        installed = path.exists()
        current = _matches(path, lambda: self.render(cfg)) if installed else None
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
        proc = _call(self._run, ["systemctl", "--user", *args])
        if _no_bus(proc):
            raise ServiceError(NO_USER_BUS)
        if check and proc.returncode != 0:
            raise ServiceError(f"systemctl --user {' '.join(args)} failed: {_why(proc)}")
        return proc

    def install(self, cfg: Config, executable: Path | None = None) -> Path:
        data = self.render(cfg, executable)
        was_active = self._systemctl("is-active", UNIT_NAME, check=False).returncode == 0
        path = self.path(cfg)
        _write_service_file(path, data)
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
        current = _matches(path, lambda: self.render(cfg)) if installed else None
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


def _matches(path: Path, render: Callable[[], bytes]) -> bool | None:
    try:
        wanted = render()
    except ServiceError:
        return None
    return _read(path) == wanted


ServiceManager = Launchd | Systemd
