"""Log setup (format, permissions, rotation) and `whisperd logs` (tail, follow)."""

from __future__ import annotations

import logging
import re
import stat
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from daemon import cli_manage
from daemon.logs import (
    LOGGER_NAMES,
    PrivateRotatingFileHandler,
    default_log_dir,
    follow,
    reset_logging,
    setup_logging,
    tail,
)

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) action=\S+ ")


@pytest.fixture(autouse=True)
def clean_logging():
    levels = {name: (logging.getLogger(name).level, logging.getLogger(name).propagate) for name in LOGGER_NAMES}
    yield
    reset_logging()
    for name, (level, propagate) in levels.items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).propagate = propagate


def test_default_log_dir_per_platform(tmp_path):
    home = tmp_path
    assert default_log_dir(platform="darwin", env={}, home=home) == home / "Library" / "Logs" / "whisperd"
    assert default_log_dir(platform="linux", env={}, home=home) == home / ".local" / "state" / "whisperd"
    assert default_log_dir(platform="linux", env={"XDG_STATE_HOME": "/var/lib/me"}, home=home) == Path("/var/lib/me/whisperd")
    assert default_log_dir(platform="linux", env={"XDG_STATE_HOME": "relative"}, home=home) == home / ".local" / "state" / "whisperd"


def test_one_line_per_event_with_action_and_fields(tmp_path):
    folder = tmp_path / "logs" / "whisperd"
    path = setup_logging(folder, verbose=False, to_console=False)

    logging.getLogger("whisperd.worker").info(
        "transcribed in 41 s", extra={"action": "job.done", "job": 12, "path": "/in/Team call.m4a"}
    )
    logging.getLogger("whisperd.service").info("started")
    logging.getLogger("daemon.scheduler").info("tick\nsecond line")
    logging.getLogger("whisperd.worker").debug("not shown without --verbose")
    logging.getLogger("apscheduler.scheduler").info("library chatter stays out")
    logging.getLogger("apscheduler.scheduler").warning("library warnings come in")

    lines = path.read_text().splitlines()
    assert len(lines) == 4
    assert all(LINE.match(line) for line in lines)
    assert lines[0].endswith(' INFO action=job.done job=12 path="/in/Team call.m4a" transcribed in 41 s')
    assert lines[1].endswith(" INFO action=- started")
    assert lines[2].endswith(" INFO action=- tick\\nsecond line")
    assert lines[3].endswith(" WARNING action=- library warnings come in")


def test_file_0600_and_folder_0700(tmp_path):
    folder = tmp_path / "new" / "logs"
    path = setup_logging(folder, verbose=True, to_console=False)
    logging.getLogger("whisperd").debug("hello")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "DEBUG action=- hello" in path.read_text()


def test_an_existing_open_log_file_is_tightened(tmp_path):
    path = tmp_path / "whisperd.log"
    path.write_text("old\n")
    path.chmod(0o644)
    setup_logging(tmp_path, verbose=False, to_console=False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_rotated_files_stay_private(tmp_path):
    handler = PrivateRotatingFileHandler(tmp_path / "whisperd.log", maxBytes=200, backupCount=2, encoding="utf-8")
    logger = logging.getLogger("whisperd.test_rotation")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for i in range(30):
            logger.warning("line %d %s", i, "x" * 40)
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.propagate = True
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["whisperd.log", "whisperd.log.1", "whisperd.log.2"]
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)


def test_setup_twice_does_not_duplicate(tmp_path, capsys):
    setup_logging(tmp_path, verbose=False, to_console=True)
    path = setup_logging(tmp_path, verbose=False, to_console=True)
    logging.getLogger("whisperd").info("once", extra={"action": "x.y"})
    assert path.read_text().count("once") == 1
    assert capsys.readouterr().err.count("action=x.y once") == 1


# --------------------------------------------------------------------------- reading


def test_tail_reads_backwards(tmp_path):
    path = tmp_path / "log"
    path.write_text("".join(f"line {i}\n" for i in range(10000)))
    assert tail(path, 3, block=100) == ["line 9997", "line 9998", "line 9999"]
    assert tail(path, 0) == []
    short = tmp_path / "short"
    short.write_text("a\nb\n")
    assert tail(short, 50) == ["a", "b"]


def test_follow_prints_appended_lines_and_survives_rotation(tmp_path):
    path = tmp_path / "whisperd.log"
    path.write_text("already there\n")
    out: list[str] = []

    def append(text: str) -> None:
        with path.open("a") as f:
            f.write(text)

    steps = iter(
        [
            lambda: append("first\nhalf"),
            lambda: append(" done\n"),
            lambda: (path.rename(tmp_path / "whisperd.log.1"), path.write_text("after rotation\n")),
            lambda: None,
        ]
    )
    rounds = {"n": 0}

    def keep_going() -> bool:
        rounds["n"] += 1
        return rounds["n"] <= 4

    follow(path, out.append, sleep=lambda s: next(steps)(), keep_going=keep_going)
    assert out == ["first\n", "half done\n", "after rotation\n"]


def cli() -> click.Group:
    @click.group()
    def main() -> None:
        pass

    main.add_command(cli_manage.logs)
    return main


def config_with_log_dir(tmp_path: Path) -> Path:
    (tmp_path / "inbox").mkdir()
    conf = tmp_path / "config.yaml"
    conf.write_text("folders:\n  - inbox: inbox\nlog_dir: logs\n")
    conf.chmod(0o600)
    return conf


def test_logs_command_prints_last_lines(tmp_path):
    conf = config_with_log_dir(tmp_path)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "whisperd.log").write_text("one\ntwo\nthree\n")
    result = CliRunner().invoke(cli(), ["logs", "-n", "2", "--config", str(conf)])
    assert result.exit_code == 0
    assert result.stdout == "two\nthree\n"


def test_logs_command_without_a_log(tmp_path):
    conf = config_with_log_dir(tmp_path)
    result = CliRunner().invoke(cli(), ["logs", "-c", str(conf)])
    assert result.exit_code == 1
    assert "no log file yet" in result.stderr


def test_logs_without_config_uses_the_default_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.delenv("WHISPERD_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    folder = default_log_dir()
    folder.mkdir(parents=True)
    (folder / "whisperd.log").write_text("from the default place\n")
    result = CliRunner().invoke(cli(), ["logs"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "from the default place\n"


def test_logs_follow_stops_cleanly_on_ctrl_c(tmp_path, monkeypatch):
    conf = config_with_log_dir(tmp_path)
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "whisperd.log"
    log.write_text("old\n")
    waits = {"n": 0}

    def fake_sleep(seconds: float) -> None:
        waits["n"] += 1
        if waits["n"] == 1:
            with log.open("a") as f:
                f.write("new\n")
        else:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli_manage, "_sleep", fake_sleep)
    result = CliRunner().invoke(cli(), ["logs", "-f", "-n", "1", "-c", str(conf)])
    assert result.exit_code == 0
    assert result.stdout == "old\nnew\n"


def test_logs_bad_config_exits_78(tmp_path):
    conf = tmp_path / "config.yaml"
    conf.write_text("folders: [")
    conf.chmod(0o600)
    result = CliRunner().invoke(cli(), ["logs", "-c", str(conf)])
    assert result.exit_code == 78
    assert result.stderr.startswith("whisperd: config file")
