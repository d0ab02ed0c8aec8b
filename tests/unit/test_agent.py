"""The LaunchAgent plist and systemd unit: rendered for real, installed into a temporary HOME
with launchctl/systemctl replaced by a recorder."""

from __future__ import annotations

import plistlib
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from daemon import config as config_mod
from daemon.agent import ServiceError, find_whisperd
from daemon.platform.launchd import Launchd, launchd_job, render_plist
from daemon.platform.systemd import NO_SYSTEMCTL, NO_USER_BUS, Systemd, render_unit
from daemon.cli_manage import agent

REPO = Path(__file__).resolve().parents[2]
EXE = Path("/Users/me/whisperd/.venv/bin/whisperd")
CONF = Path("/Users/me/whisperd/config.yaml")
HOME = Path("/Users/me")


class Recorder:
    """Stands in for subprocess.run: records each argv, answers from a script of (rc, stdout, stderr)."""

    def __init__(self, answers: dict[str, list[tuple[int, str, str]]] | None = None, default: tuple[int, str, str] = (0, "", "")):
        self.calls: list[list[str]] = []
        self.kwargs: list[dict] = []
        self.answers = answers or {}
        self.default = default

    def __call__(self, argv, **kwargs):
        assert isinstance(argv, list), "commands must be argument lists, never shell strings"
        assert not kwargs.get("shell"), "never through a shell"
        self.calls.append(list(argv))
        self.kwargs.append(kwargs)
        key = " ".join(argv[2:4]) if argv[0] == "systemctl" else argv[1]
        queue = self.answers.get(key)
        rc, out, err = queue.pop(0) if queue else self.default
        return subprocess.CompletedProcess(argv, rc, out, err)


def write_config(folder: Path, extra: str = "") -> Path:
    (folder / "inbox").mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text("folders:\n  - inbox: inbox\nlabel: com.example.whisperd\n" + extra, encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return h


@pytest.fixture
def cfg(tmp_path):
    return config_mod.load(write_config(tmp_path / "project"))


@pytest.fixture
def exe(tmp_path):
    p = tmp_path / "venv" / "bin" / "whisperd"
    p.parent.mkdir(parents=True)
    p.write_text("#!/bin/sh\n")
    p.chmod(0o755)
    return p


# --------------------------------------------------------------------------- plist rendering


def test_plist_has_every_key_with_absolute_paths():
    job = plistlib.loads(render_plist(label="com.whisperd.agent", executable=EXE, config=CONF, home=HOME))

    assert job["Label"] == "com.whisperd.agent"
    assert job["ProgramArguments"] == [str(EXE), "run", "--config", str(CONF)]
    assert all(Path(a).is_absolute() for a in (job["ProgramArguments"][0], job["ProgramArguments"][3]))
    assert job["RunAtLoad"] is True
    assert job["KeepAlive"] == {"SuccessfulExit": False}
    assert job["ThrottleInterval"] >= 30
    assert job["ProcessType"] == "Background"
    assert job["LowPriorityIO"] is True
    assert job["Nice"] >= 5
    assert 10 <= job["ExitTimeOut"] <= 30
    assert job["WorkingDirectory"] == str(CONF.parent)
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert Path(job[key]).parent == HOME / "Library" / "Logs" / "whisperd"
    assert job["StandardOutPath"] != job["StandardErrorPath"]
    env = job["EnvironmentVariables"]
    assert env["PYTHONUNBUFFERED"] == "1"
    path_dirs = env["PATH"].split(":")
    for d in ("/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        assert d in path_dirs
    assert path_dirs[0] == str(EXE.parent)  # the venv's own tools come first


def test_plist_survives_awkward_paths():
    exe = Path("/Users/A & B/<venv>/bin/whisperd")
    conf = Path('/Users/A & B/"quoted" dir/config.yaml')
    job = plistlib.loads(render_plist(label="com.x.y", executable=exe, config=conf, home=Path("/Users/A & B")))
    assert job["ProgramArguments"] == [str(exe), "run", "--config", str(conf)]


@pytest.mark.parametrize("bad", [{"executable": Path("venv/bin/whisperd")}, {"config": Path("config.yaml")}])
def test_relative_paths_are_refused(bad):
    kwargs = {"label": "l", "executable": EXE, "config": CONF, "home": HOME, **bad}
    with pytest.raises(ServiceError, match="absolute"):
        launchd_job(**kwargs)


def test_reference_plist_is_what_the_code_renders():
    example = render_plist(
        label="com.whisperd.agent",
        executable=Path("/Users/you/whisperd/.venv/bin/whisperd"),
        config=Path("/Users/you/whisperd/config.yaml"),
        home=Path("/Users/you"),
    )
    assert (REPO / "launchd" / "com.whisperd.agent.plist").read_bytes() == example


# --------------------------------------------------------------------------- unit rendering


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    section, out = "", []
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line:
            key, value = line.split("=", 1)
            out.append((section, key, value))
    return out


def test_unit_has_every_setting():
    entries = unit_entries(render_unit(executable=Path("/home/me/venv/bin/whisperd"), config=Path("/home/me/w/config.yaml")))
    service = {k: v for s, k, v in entries if s == "Service" and k != "Environment"}
    env = [v for s, k, v in entries if k == "Environment"]

    assert shlex.split(service["ExecStart"]) == ["/home/me/venv/bin/whisperd", "run", "--config", "/home/me/w/config.yaml"]
    assert service["WorkingDirectory"] == "/home/me/w"
    assert service["Restart"] == "on-failure"
    assert service["RestartSec"] == "30"
    assert service["Nice"] == "10"
    assert service["IOSchedulingClass"] == "idle"
    assert service["KillSignal"] == "SIGTERM"
    assert service["TimeoutStopSec"] == "20"
    assert "PYTHONUNBUFFERED=1" in env
    assert ("Install", "WantedBy", "default.target") in entries


def test_unit_escapes_spaces_quotes_and_specifiers():
    exe = Path("/home/me/My Apps/venv/bin/whisperd")
    conf = Path('/home/me/100% "real"/$HOME/config.yaml')
    service = {k: v for s, k, v in unit_entries(render_unit(executable=exe, config=conf)) if s == "Service"}
    exec_start = service["ExecStart"]
    assert "%%" in exec_start and "$$" in exec_start  # systemd would expand a bare % or $
    unescaped = exec_start.replace("%%", "%").replace("$$", "$")
    assert shlex.split(unescaped) == [str(exe), "run", "--config", str(conf)]


# --------------------------------------------------------------------------- finding the executable


def test_find_whisperd_prefers_the_venv_sibling(tmp_path, exe):
    python = exe.parent / "python"
    python.symlink_to("/usr/bin/env")  # a venv's python is usually a symlink; its folder is what counts
    assert find_whisperd(str(python), which=lambda name: "/elsewhere/whisperd") == exe


def test_find_whisperd_falls_back_to_path(tmp_path):
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.touch()
    assert find_whisperd(str(python), which=lambda name: "/opt/homebrew/bin/whisperd") == Path("/opt/homebrew/bin/whisperd")
    with pytest.raises(ServiceError, match="pip install"):
        find_whisperd(str(python), which=lambda name: None)


# --------------------------------------------------------------------------- launchd


def test_launchd_install_writes_0644_plist_and_bootstraps(home, cfg, exe):
    run = Recorder({"print": [(113, "", "Could not find service")]})
    manager = Launchd(run=run, uid=501)

    path = manager.install(cfg, exe)

    assert path == home / "Library" / "LaunchAgents" / "com.example.whisperd.plist"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not path.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    job = plistlib.loads(path.read_bytes())
    assert job["ProgramArguments"] == [str(exe), "run", "--config", str(cfg.path)]
    assert job["StandardErrorPath"].startswith(str(home / "Library" / "Logs" / "whisperd"))
    logs = home / "Library" / "Logs" / "whisperd"
    assert logs.is_dir() and stat.S_IMODE(logs.stat().st_mode) == 0o700
    assert run.calls == [
        ["launchctl", "print", "gui/501/com.example.whisperd"],
        ["launchctl", "bootstrap", "gui/501", str(path)],
    ]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_launchd_reinstall_boots_out_then_retries_bootstrap(home, cfg, exe):
    run = Recorder({"print": [(0, "state = running\n", "")], "bootstrap": [(5, "", "Bootstrap failed: 5: Input/output error"), (0, "", "")]})
    slept: list[float] = []
    manager = Launchd(run=run, uid=501, sleep=slept.append)

    path = manager.install(cfg, exe)

    assert run.calls == [
        ["launchctl", "print", "gui/501/com.example.whisperd"],
        ["launchctl", "bootout", "gui/501/com.example.whisperd"],
        ["launchctl", "bootstrap", "gui/501", str(path)],
        ["launchctl", "bootstrap", "gui/501", str(path)],
    ]
    assert slept == [1.0]


def test_launchd_bootstrap_failure_is_reported(home, cfg, exe):
    run = Recorder({"print": [(113, "", "")], "bootstrap": [(5, "", "Bootstrap failed: 5: Input/output error")]})
    with pytest.raises(ServiceError, match="Input/output error"):
        Launchd(run=run, uid=501).install(cfg, exe)


def test_launchd_without_a_desktop_session_says_why(home, cfg, exe):
    run = Recorder({"print": [(113, "", "")], "bootstrap": [(125, "", "Bootstrap failed: 125: Domain does not support specified action")]})
    with pytest.raises(ServiceError, match="logged in to the desktop"):
        Launchd(run=run, uid=501).install(cfg, exe)


def test_launchd_uninstall_boots_out_and_removes(home, cfg, exe):
    Launchd(run=Recorder({"print": [(113, "", "")]}), uid=501).install(cfg, exe)
    run = Recorder({"print": [(0, "", "")]})
    manager = Launchd(run=run, uid=501)

    assert manager.uninstall(cfg) is True
    assert not manager.path(cfg).exists()
    assert run.calls[-1] == ["launchctl", "bootout", "gui/501/com.example.whisperd"]
    assert Launchd(run=Recorder(default=(113, "", "")), uid=501).uninstall(cfg) is False


LAUNCHCTL_PRINT = """gui/501/com.example.whisperd = {
\tactive count = 1
\tpath = /Users/me/Library/LaunchAgents/com.example.whisperd.plist
\ttype = LaunchAgent
\tstate = running

\tprogram = /Users/me/whisperd/.venv/bin/whisperd
\targuments = {
\t\t/Users/me/whisperd/.venv/bin/whisperd
\t\trun
\t}
\tpid = 4242
\timmediate reason = speculative
}
"""


def test_launchd_status_and_restart(home, cfg, exe):
    manager = Launchd(run=Recorder({"print": [(113, "", "")]}), uid=501)
    manager.install(cfg, exe)
    run = Recorder({"print": [(0, LAUNCHCTL_PRINT, "")]})
    manager = Launchd(run=run, uid=501)

    st = manager.status(cfg)
    assert (st.installed, st.loaded, st.running, st.pid) == (True, True, True, 4242)

    manager.restart(cfg)
    assert run.calls[-1] == ["launchctl", "kickstart", "-k", "gui/501/com.example.whisperd"]


def test_launchd_without_launchctl_says_so(home, cfg, exe):
    def missing(argv, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    manager = Launchd(run=missing, uid=501)
    st = manager.status(cfg)
    assert st.loaded is None and "launchctl was not found" in st.detail
    with pytest.raises(ServiceError, match="launchctl was not found"):
        manager.install(cfg, exe)


# --------------------------------------------------------------------------- systemd


def systemd(run, **kw):
    return Systemd(run=run, which=lambda name: "/usr/bin/systemctl", **kw)


def test_systemd_install_writes_unit_and_enables(home, cfg, exe):
    run = Recorder({"is-active whisperd.service": [(3, "inactive\n", "")]})
    path = systemd(run).install(cfg, exe)

    assert path == home / ".config" / "systemd" / "user" / "whisperd.service"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_text() == render_unit(executable=exe, config=cfg.path)
    assert run.calls == [
        ["systemctl", "--user", "is-active", "whisperd.service"],
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "--now", "whisperd.service"],
    ]


def test_systemd_reinstall_restarts_a_running_service(home, cfg, exe):
    run = Recorder({"is-active whisperd.service": [(0, "active\n", "")]})
    systemd(run).install(cfg, exe)
    assert run.calls[-1] == ["systemctl", "--user", "restart", "whisperd.service"]


def test_systemd_honours_xdg_config_home(tmp_path, home, cfg, exe):
    xdg = tmp_path / "xdg"
    path = systemd(Recorder(default=(3, "", "")), env={"XDG_CONFIG_HOME": str(xdg)})
    assert path.path(cfg) == xdg / "systemd" / "user" / "whisperd.service"


def test_systemd_without_user_bus_explains_and_writes_nothing(home, cfg, exe):
    run = Recorder(default=(1, "", "Failed to connect to bus: No medium found"))
    manager = systemd(run)
    with pytest.raises(ServiceError) as err:
        manager.install(cfg, exe)
    assert str(err.value) == NO_USER_BUS
    assert not manager.path(cfg).exists()
    st = manager.status(cfg)
    assert (st.installed, st.loaded, st.running, st.detail) == (False, None, None, NO_USER_BUS)


def test_systemd_absent(home, cfg, exe):
    manager = Systemd(run=Recorder(), which=lambda name: None)
    st = manager.status(cfg)
    assert st.loaded is None and st.detail == NO_SYSTEMCTL
    with pytest.raises(ServiceError, match="systemctl was not found"):
        manager.install(cfg, exe)


def test_systemd_status_and_uninstall(tmp_path, home, cfg, exe):
    systemd(Recorder({"is-active whisperd.service": [(3, "inactive\n", "")]})).install(cfg, exe)
    run = Recorder({"is-enabled whisperd.service": [(0, "enabled\n", "")], "is-active whisperd.service": [(0, "active\n", "")]})
    manager = systemd(run)

    st = manager.status(cfg)
    assert (st.installed, st.loaded, st.running) == (True, True, True)
    assert Systemd(run=run, which=lambda n: "/usr/bin/systemctl", executable=exe).status(cfg).current is True
    other = tmp_path / "other" / "whisperd"
    assert Systemd(run=run, which=lambda n: "/usr/bin/systemctl", executable=other).status(cfg).current is False

    assert manager.uninstall(cfg) is True
    assert not manager.path(cfg).exists()
    assert run.calls[-2:] == [
        ["systemctl", "--user", "disable", "--now", "whisperd.service"],
        ["systemctl", "--user", "daemon-reload"],
    ]
    assert manager.uninstall(cfg) is False


# --------------------------------------------------------------------------- CLI


def cli() -> click.Group:
    @click.group()
    def main() -> None:
        pass

    main.add_command(agent)
    return main


def test_cli_plist_prints_and_touches_nothing(tmp_path, home, exe, monkeypatch):
    conf = write_config(tmp_path / "project")
    monkeypatch.setattr(sys, "executable", str(exe.parent / "python"))  # as if run from that venv

    result = CliRunner().invoke(cli(), ["agent", "plist", "--config", str(conf)])

    assert result.exit_code == 0, result.output
    job = plistlib.loads(result.stdout.encode())
    assert job["Label"] == "com.example.whisperd"
    assert job["ProgramArguments"][0] == str(exe)
    assert job["ProgramArguments"][3] == str(conf)
    assert list(home.iterdir()) == []


def test_cli_unit_prints(tmp_path, home, exe):
    conf = write_config(tmp_path / "project")
    result = CliRunner().invoke(cli(), ["agent", "unit", "-c", str(conf), "--executable", str(exe)])
    assert result.exit_code == 0, result.output
    assert f"ExecStart={exe} run --config {conf}" in result.stdout
    assert list(home.iterdir()) == []


def test_cli_install_status_uninstall(tmp_path, home, exe):
    conf = write_config(tmp_path / "project")
    run = Recorder({"print": [(113, "", "")]})
    manager = Launchd(run=run, uid=501)
    obj = {"service_manager": manager}

    result = CliRunner().invoke(cli(), ["agent", "install", "-c", str(conf), "--executable", str(exe)], obj=obj)
    assert result.exit_code == 0, result.output
    assert (home / "Library" / "LaunchAgents" / "com.example.whisperd.plist").exists()
    assert ["launchctl", "bootstrap", "gui/501", str(home / "Library" / "LaunchAgents" / "com.example.whisperd.plist")] in run.calls

    result = CliRunner().invoke(cli(), ["agent", "status", "-c", str(conf)], obj=obj)
    assert result.exit_code == 0
    assert "installed" in result.stdout and "running:   no" in result.stdout

    run.answers["print"] = [(0, "", "")]
    result = CliRunner().invoke(cli(), ["agent", "uninstall", "-c", str(conf)], obj=obj)
    assert result.exit_code == 0
    assert "Removed" in result.stdout


def test_cli_status_without_user_bus_is_plain(tmp_path, home):
    conf = write_config(tmp_path / "project")
    manager = systemd(Recorder(default=(1, "", "Failed to connect to bus: No medium found")))
    result = CliRunner().invoke(cli(), ["agent", "status", "-c", str(conf)], obj={"service_manager": manager})
    assert result.exit_code == 0
    assert result.exception is None
    assert "no user bus" in result.stdout and "Traceback" not in result.output


def test_cli_bad_config_exits_78(tmp_path, home):
    bad = tmp_path / "config.yaml"
    bad.write_text("folders: nope\n")
    bad.chmod(0o600)
    result = CliRunner().invoke(cli(), ["agent", "plist", "-c", str(bad)])
    assert result.exit_code == 78
    assert result.stderr.startswith("whisperd: config key 'folders'")
