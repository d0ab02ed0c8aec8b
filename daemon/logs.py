"""Logging setup (called only from the CLI) and reading the log back (``whisperd logs``).

One line per event::

    2026-11-24 05:30:00 INFO action=job.done job=12 path=/Users/me/inbox/a.m4a transcribed in 41 s

``action`` comes from ``extra={"action": ...}`` and is ``-`` when missing; any
other ``extra`` fields follow as ``key=value``.
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, TextIO

LOG_NAME = "whisperd.log"
MAX_BYTES = 5 * 1024 * 1024
BACKUPS = 5
LOGGER_NAMES = ("whisperd", "daemon")  # our loggers: getLogger("whisperd.x") and getLogger(__name__) in daemon/
_MARK = "_whisperd_handler"
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "action", "taskName"}


def default_log_dir(*, platform: str = sys.platform, env: Mapping[str, str] | None = None, home: Path | None = None) -> Path:
    """``~/Library/Logs/whisperd`` on macOS, ``$XDG_STATE_HOME/whisperd`` (default ``~/.local/state/whisperd``) elsewhere."""
    env = os.environ if env is None else env
    home = home or Path.home()
    if platform == "darwin":
        return home / "Library" / "Logs" / "whisperd"
    state = env.get("XDG_STATE_HOME", "")
    base = Path(state) if state and os.path.isabs(state) else home / ".local" / "state"
    return base / "whisperd"


def log_file(log_dir: Path | None) -> Path:
    return (log_dir or default_log_dir()) / LOG_NAME


class ActionFilter(logging.Filter):
    """Gives every record an ``action`` attribute (``-`` when the caller set none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "action", None):
            record.action = "-"
        return True


def _value(v: object) -> str:
    text = str(v)
    if text == "" or any(c.isspace() or c in '"=' for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class KeyValueFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(datefmt="%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        parts = [self.formatTime(record, self.datefmt), record.levelname, f"action={getattr(record, 'action', None) or '-'}"]
        parts += [f"{k}={_value(v)}" for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")]
        line = " ".join(parts + [record.message]).replace("\n", "\\n")
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler whose files are created 0600 (transcript names are private)."""

    def _open(self) -> TextIO:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)


def reset_logging() -> None:
    """Remove the handlers setup_logging added (and close their files)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _MARK, False):
            root.removeHandler(handler)
            handler.close()


def setup_logging(log_dir: Path | None, *, verbose: bool, to_console: bool) -> Path:
    """Send whisperd's records to a rotating file (and stderr if ``to_console``); returns the log file.

    Handlers sit on the root logger, so third-party warnings (APScheduler,
    watchdog) land in the same file; our own loggers (``whisperd.*`` and
    ``daemon.*``) log from INFO, or DEBUG with ``verbose``. Calling it again
    replaces the previous setup.
    """
    reset_logging()
    folder = Path(log_dir) if log_dir else default_log_dir()
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True)
    path = folder / LOG_NAME
    handlers: list[logging.Handler] = [PrivateRotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")]
    if to_console:
        handlers.append(logging.StreamHandler(sys.stderr))
    root = logging.getLogger()
    for handler in handlers:
        setattr(handler, _MARK, True)
        handler.addFilter(ActionFilter())
        handler.setFormatter(KeyValueFormatter())
        root.addHandler(handler)
    for name in LOGGER_NAMES:
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        logger.propagate = True
    return path


# --------------------------------------------------------------------------- reading


def tail(path: Path, n: int, *, block: int = 64 * 1024) -> list[str]:
    """The last ``n`` lines of ``path`` (without newlines), reading backwards from the end."""
    if n <= 0:
        return []
    with open(path, "rb") as f:
        f.seek(0, io.SEEK_END)
        end = f.tell()
        data = b""
        while end > 0 and data.count(b"\n") <= n:
            step = min(block, end)
            end -= step
            f.seek(end)
            data = f.read(step) + data
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-n:]


def follow(
    path: Path,
    write: Callable[[str], object],
    *,
    poll: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    keep_going: Callable[[], bool] = lambda: True,
) -> None:
    """Print lines appended to ``path`` until ``keep_going()`` is false (or Ctrl-C, which the caller catches).

    Starts at the current end. Notices rotation (a new file at the path, or the
    file shrinking) and reopens from the start of the new file.
    """
    f = None
    ino = None
    pos = 0
    buf = ""
    try:
        while keep_going():
            try:
                st = path.stat()
            except FileNotFoundError:
                st = None
            if st is not None and (f is None or st.st_ino != ino or st.st_size < pos):
                if f is not None:
                    buf += f.read()  # whatever the old file still had
                    f.close()
                    start = 0
                else:
                    start = st.st_size
                f = open(path, encoding="utf-8", errors="replace", newline="")
                f.seek(start)
                ino, pos = st.st_ino, start
            if f is not None:
                chunk = f.read()
                pos = f.tell()
                buf += chunk
                *complete, buf = buf.split("\n")
                for line in complete:
                    write(line.rstrip("\r") + "\n")
            sleep(poll)
    finally:
        if f is not None:
            f.close()
