"""platform/: parsers over recorded macOS output, folder-access explanations, sleep inhibition, senders."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

import daemon.platform as platform
from daemon.platform.launchd import Launchd
from daemon.platform.systemd import Systemd
from daemon.platform import linux, macos
from daemon.platform.base import PROBE_PREFIX, NoKeepAwake

DATA = Path(__file__).resolve().parents[1] / "data" / "platform"


def recorded(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def answering(stdout: str, rc: int = 0):
    calls: list[list[str]] = []

    def run(argv, **kwargs):
        assert isinstance(argv, list) and not kwargs.get("shell")
        calls.append(argv)
        return subprocess.CompletedProcess(argv, rc, stdout, "")

    run.calls = calls  # type: ignore[attr-defined]
    return run


def missing_command(argv, **kwargs):
    raise FileNotFoundError(errno.ENOENT, "No such file or directory", argv[0])


# --------------------------------------------------------------------------- the choice


def test_one_implementation_is_chosen_at_import():
    assert platform.IS_MACOS == (sys.platform == "darwin")
    expected = Launchd if platform.IS_MACOS else Systemd
    assert isinstance(platform.service_manager, expected)
    for name in ("keep_awake", "check_folder_access", "on_ac_power", "idle_seconds", "notify_sender"):
        assert callable(getattr(platform, name))
    with platform.keep_awake() as awake:
        if not platform.IS_MACOS:
            assert awake.active
    assert not awake.active


# --------------------------------------------------------------------------- pmset / ioreg


@pytest.mark.parametrize(
    "name, expected",
    [("pmset_batt_ac.txt", True), ("pmset_batt_ac_laptop.txt", True), ("pmset_batt_battery.txt", False)],
)
def test_parse_pmset_batt(name, expected):
    assert macos.parse_pmset_batt(recorded(name)) is expected


def test_parse_pmset_batt_unreadable():
    assert macos.parse_pmset_batt("") is None
    assert macos.parse_pmset_batt(recorded("pmset_therm.txt")) is None


def test_parse_hid_idle():
    assert macos.parse_hid_idle(recorded("ioreg_hid.txt")) == pytest.approx(1843.712345678)
    assert macos.parse_hid_idle(recorded("pmset_therm.txt")) is None


def test_macos_probes_run_the_commands_as_argument_lists():
    run = answering(recorded("pmset_batt_battery.txt"))
    assert macos.on_ac_power(run) is False
    assert run.calls == [["pmset", "-g", "batt"]]

    run = answering(recorded("ioreg_hid.txt"))
    assert macos.idle_seconds(run) == pytest.approx(1843.7, abs=0.1)
    assert run.calls == [["ioreg", "-c", "IOHIDSystem"]]

    assert macos.pmset_therm(answering(recorded("pmset_therm_limited.txt"))).count("CPU_Speed_Limit") == 1


def test_macos_probes_return_none_when_the_command_fails():
    assert macos.on_ac_power(answering("", rc=1)) is None
    assert macos.on_ac_power(missing_command) is None
    assert macos.idle_seconds(missing_command) is None
    assert macos.pmset_therm(missing_command) is None


def test_linux_power_from_psutil():
    Battery = namedtuple("Battery", "percent secsleft power_plugged")
    assert linux.on_ac_power(lambda: None) is None  # no battery: a desktop or server
    assert linux.on_ac_power(lambda: Battery(80, 3600, True)) is True
    assert linux.on_ac_power(lambda: Battery(80, 3600, False)) is False
    assert linux.on_ac_power(lambda: Battery(80, 3600, None)) is None
    assert linux.idle_seconds() is None


def test_linux_thermal_zones(tmp_path):
    for name, value in (("thermal_zone0", "47000\n"), ("thermal_zone1", "61500\n"), ("thermal_zone2", "garbage")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "temp").write_text(value)
    assert linux.thermal_zone_temps(tmp_path) == {"thermal_zone0": 47.0, "thermal_zone1": 61.5}
    assert linux.thermal_zone_temps(tmp_path / "absent") == {}


# --------------------------------------------------------------------------- folder access


def eperm(path):
    raise PermissionError(errno.EPERM, "Operation not permitted", str(path))


def eacces(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied", str(args[0]))


def test_macos_eperm_means_full_disk_access(tmp_path):
    real = tmp_path / "Cellar" / "python3.11"
    real.parent.mkdir()
    real.touch()
    venv_python = tmp_path / "venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.symlink_to(real)
    folder = tmp_path / "Desktop"
    folder.mkdir()

    problem = macos.check_folder_access(folder, python=str(venv_python), listdir=eperm)

    assert problem is not None and problem.kind == "privacy"
    assert problem.path == folder
    assert "Operation not permitted" in problem.message
    assert "System Settings → Privacy & Security → Full Disk Access" in problem.fix
    assert str(real) in problem.fix and str(venv_python) not in problem.fix
    assert problem.link == "x-apple.systempreferences:com.apple.preference.security?Privacy_AllFiles"
    assert problem.link in problem.fix


def test_macos_write_denied_by_tcc_is_caught_at_the_probe_file(tmp_path):
    problem = macos.check_folder_access(tmp_path, python=sys.executable, open_=lambda p, *a: eperm(p))
    assert problem is not None and problem.kind == "privacy"


def test_macos_eacces_is_plain_permissions(tmp_path):
    problem = macos.check_folder_access(tmp_path, listdir=eacces)
    assert problem is not None and problem.kind == "permission"
    assert "Full Disk Access" not in str(problem)
    assert "chmod" in problem.fix


@pytest.mark.parametrize("check", [linux.check_folder_access, macos.check_folder_access])
def test_access_ok_leaves_no_probe_behind(tmp_path, check):
    (tmp_path / "keep.m4a").write_bytes(b"x")
    assert check(tmp_path) is None
    assert [p.name for p in tmp_path.iterdir()] == ["keep.m4a"]


@pytest.mark.parametrize("check", [linux.check_folder_access, macos.check_folder_access])
def test_missing_folder_and_file_instead_of_folder(tmp_path, check):
    problem = check(tmp_path / "nope")
    assert problem is not None and problem.kind == "missing" and "does not exist" in problem.message
    (tmp_path / "file").write_text("")
    problem = check(tmp_path / "file")
    assert problem is not None and problem.kind == "not_a_folder"


def test_linux_permission_denied_is_plain(tmp_path):
    # Tests may run as root, where mode 000 blocks nothing: the OS error is injected instead.
    problem = linux.check_folder_access(tmp_path, open_=eacces)
    assert problem is not None and problem.kind == "permission"
    assert "Permission denied" in problem.message and str(tmp_path) in problem.message
    assert "Full Disk Access" not in str(problem)
    problem = linux.check_folder_access(tmp_path, listdir=eperm)
    assert problem is not None and problem.kind == "permission"


def test_probe_name_is_recognisable(tmp_path):
    seen: list[str] = []

    def record_open(path, flags, mode):
        seen.append(Path(path).name)
        assert flags & os.O_EXCL and mode == 0o600
        return os.open(path, flags, mode)

    assert linux.check_folder_access(tmp_path, open_=record_open) is None
    assert seen and seen[0].startswith(PROBE_PREFIX)


# --------------------------------------------------------------------------- keep awake


class FakeProc:
    def __init__(self) -> None:
        self.returncode = None
        self.terminated = False

    def poll(self):
        return self.returncode

    def terminate(self):
        self.terminated = True
        self.returncode = -15

    def wait(self, timeout=None):
        return self.returncode


def test_caffeinate_argv_and_lifecycle():
    started: list[list[str]] = []
    procs: list[FakeProc] = []

    def popen(argv, **kwargs):
        started.append(argv)
        procs.append(FakeProc())
        return procs[-1]

    awake = macos.Caffeinate(popen=popen, pid=4321)
    awake.start()
    awake.start()  # already running: no second caffeinate
    assert started == [["caffeinate", "-i", "-w", "4321"]]
    assert awake.active
    awake.stop()
    assert procs[0].terminated and not awake.active
    awake.stop()  # stopping twice is harmless


def test_caffeinate_stops_a_real_process():
    # `sleep` stands in for caffeinate: a real child that must be gone after stop().
    awake = macos.Caffeinate(popen=lambda argv, **kw: subprocess.Popen(["sleep", "60"], **kw))
    with awake:
        proc = awake._proc
        assert awake.active and proc.poll() is None
    assert proc.poll() is not None
    assert not awake.active


def test_caffeinate_missing_is_not_fatal():
    def popen(argv, **kwargs):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "caffeinate")

    awake = macos.Caffeinate(popen=popen)
    awake.start()
    assert not awake.active


def test_linux_keep_awake_is_a_no_op_with_the_same_interface():
    awake = linux.keep_awake()
    assert isinstance(awake, NoKeepAwake)
    with awake:
        assert awake.active
    assert not awake.active


# --------------------------------------------------------------------------- notification senders


def test_applescript_string_escapes_quotes_and_backslashes():
    assert macos.applescript_string('say "hi"') == '"say \\"hi\\""'
    assert macos.applescript_string("C:\\dir") == '"C:\\\\dir"'
    assert macos.applescript_string("two\nlines") == '"two lines"'


def test_osascript_sender_passes_an_argv_list():
    run = answering("")
    assert macos.OsascriptSender(run)("whisperd", 'Meeting "Q3" \\ notes.m4a transcribed') is True
    assert run.calls == [
        [
            "osascript",
            "-e",
            'display notification "Meeting \\"Q3\\" \\\\ notes.m4a transcribed" with title "whisperd"',
        ]
    ]
    assert macos.OsascriptSender(missing_command)("whisperd", "x") is False


def test_osascript_script_is_valid_for_hostile_text():
    # The script must stay one string literal whatever the file name holds.
    script = macos.osascript_argv("whisperd", '"; do shell script "rm -rf ~" --')[2]
    body = script[len("display notification ") : script.index(" with title ")]
    assert body.startswith('"') and body.endswith('"')
    inner = body[1:-1]
    i = 0
    while i < len(inner):  # every quote inside is escaped
        if inner[i] == "\\":
            i += 2
            continue
        assert inner[i] != '"'
        i += 1


def test_notify_send_only_when_installed():
    run = answering("")
    assert linux.NotifySendSender(run, which=lambda name: None)("whisperd", "hi") is False
    assert run.calls == []
    assert linux.NotifySendSender(run, which=lambda name: "/usr/bin/notify-send")("whisperd", "-3 files") is True
    assert run.calls == [["notify-send", "--app-name=whisperd", "--", "whisperd", "-3 files"]]
