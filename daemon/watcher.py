"""Finding files in the inboxes: watchdog events, periodic rescans, and the settle check.

Events only say "look here"; the rescan is the ground truth, because events
get lost (FSEvents coalesces, inotify overflows). A file is handed on once its
size and mtime have stood still for the settle time and it opens for reading.
The clock and ``stat`` are injected so tests control time without sleeping.
"""

from __future__ import annotations

import logging
import os
import stat as statmod
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from daemon import files

log = logging.getLogger("whisperd.watcher")

TEMP_SUFFIXES = (".download", ".crdownload", ".part", ".partial", ".tmp", ".temp", ".icloud", ".opdownload", ".sb-")
IGNORED_NAMES = {".DS_Store", "Icon\r", "desktop.ini", "Thumbs.db"}


def ignored(name: str) -> bool:
    """Hidden files, AppleDouble ``._*`` files, Office ``~$`` locks and names of copies in progress."""
    if name in IGNORED_NAMES or name.startswith((".", "~$")):
        return True
    lower = name.lower()
    return lower.endswith(TEMP_SUFFIXES) or ".sb-" in lower


@dataclass(frozen=True)
class Found:
    """A candidate file in an inbox."""

    folder: int  # index of the folder entry
    path: str  # absolute
    rel: str  # relative to the inbox, with "/" separators


@dataclass(frozen=True)
class Settled:
    found: Found
    size: int
    mtime: float
    is_link: bool


def scan(folder: int, inbox: Path) -> Iterator[Found]:
    """Every candidate under ``inbox``, at any depth. Symlinks are reported, never followed."""
    for dirpath, dirnames, filenames in os.walk(inbox, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not ignored(d))
        base = Path(dirpath)
        # a symlink to a directory shows up in dirnames; os.walk does not enter it, and we report it
        for d in list(dirnames):
            if (base / d).is_symlink():
                dirnames.remove(d)
                filenames.append(d)
        for name in sorted(filenames):
            if ignored(name):
                continue
            p = base / name
            yield Found(folder, str(p), p.relative_to(inbox).as_posix())


def locate(path: str, inboxes: Iterable[Path]) -> Found | None:
    """Which inbox a path belongs to, if any, and its relative path."""
    for i, inbox in enumerate(inboxes):
        try:
            rel = Path(path).relative_to(inbox)
        except ValueError:
            continue
        if rel.parts and not any(ignored(part) for part in rel.parts):
            return Found(i, path, rel.as_posix())
    return None


class Settler:
    """Tracks candidates until their size and mtime stand still for ``settle_seconds``."""

    def __init__(
        self,
        settle_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        lstat: Callable[[str], os.stat_result] = os.lstat,
        readable: Callable[[str], bool] | None = None,
    ) -> None:
        self.settle_seconds = settle_seconds
        self.clock = clock
        self.lstat = lstat
        self.readable = readable or _opens_for_reading
        self._watch: dict[str, tuple[Found, int, int, float]] = {}
        self._lock = threading.Lock()
        self._skipped: set[tuple[str, int]] = set()  # (path, inode) of things that are not files, logged once

    def __len__(self) -> int:
        return len(self._watch)

    def folders(self) -> set[int]:
        """The folder entries that have candidates settling."""
        with self._lock:
            return {found.folder for found, *_ in self._watch.values()}

    def add(self, found: Found) -> None:
        with self._lock:
            if found.path not in self._watch:
                self._watch[found.path] = (found, -1, -1, self.clock())

    def poll(self) -> list[Settled]:
        """Candidates that have settled since the last poll. Vanished ones are dropped."""
        now = self.clock()
        ready: list[Settled] = []
        with self._lock:
            items = list(self._watch.items())
        for path, (found, size, mtime_ns, since) in items:
            try:
                st = self.lstat(path)
            except OSError:
                self._drop(path)
                continue
            if statmod.S_ISDIR(st.st_mode):
                self._drop(path)
                continue
            is_link = statmod.S_ISLNK(st.st_mode)
            if not is_link and not statmod.S_ISREG(st.st_mode):
                self._drop(path)
                self._skip(found, st)
                continue
            if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
                with self._lock:
                    self._watch[path] = (found, st.st_size, st.st_mtime_ns, now)
                continue
            if now - since < self.settle_seconds:
                continue
            if not is_link and _icloud_placeholder(st):
                continue  # not downloaded yet; look again later
            if not is_link and not self.readable(path):
                continue  # still locked by the writer, or unreadable for now
            self._drop(path)
            ready.append(Settled(found, st.st_size, st.st_mtime, is_link))
        return ready

    def _drop(self, path: str) -> None:
        with self._lock:
            self._watch.pop(path, None)

    def _skip(self, found: Found, st: os.stat_result) -> None:
        """A pipe, socket or device is never a candidate (opening a pipe can block for good): one log line."""
        key = (found.path, st.st_ino)
        if key in self._skipped:
            return
        if len(self._skipped) > 10_000:
            self._skipped.clear()
        self._skipped.add(key)
        log.info("skipped %s: it is %s, not a recording", found.rel, files.kind(st.st_mode), extra={"action": "watch.not_a_file"})


def _icloud_placeholder(st: os.stat_result) -> bool:
    """On macOS an iCloud file that is not downloaded has a size but no blocks."""
    return sys.platform == "darwin" and st.st_size > 0 and getattr(st, "st_blocks", 1) == 0


def _opens_for_reading(path: str) -> bool:
    try:
        fd = files.open_regular(path)
    except OSError:
        return False
    os.close(fd)
    return True


class _Handler(FileSystemEventHandler):
    def __init__(self, notify: Callable[[str], None]) -> None:
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        path = getattr(event, "dest_path", "") or event.src_path  # follow renames into the inbox
        self.notify(os.fsdecode(path))
        if event.is_directory and event.event_type in ("created", "moved"):
            self.notify(os.fsdecode(path) + os.sep)  # a folder moved in: rescan it


class Watcher:
    """watchdog observers on every inbox; each event is passed to ``notify`` as a path."""

    def __init__(self, inboxes: Iterable[Path], notify: Callable[[str], None]) -> None:
        self.inboxes = list(inboxes)
        self.notify = notify
        self.observer = Observer()
        self._handler = _Handler(notify)
        self._watched: set[Path] = set()

    def start(self) -> None:
        self.observer.start()
        self.watch_missing()

    def watch_missing(self) -> None:
        """Watch each inbox not watched yet. One that is not there (its disk away) is left to the
        rescans, and watched once it is back (the daemon calls this when it is)."""
        for inbox in self.inboxes:
            if inbox in self._watched:
                continue
            try:
                self.observer.schedule(self._handler, str(inbox), recursive=True)
            except OSError as exc:
                log.warning("not watching %s for now (%s); it is looked at again when it is back", inbox,
                            exc.strerror or exc, extra={"action": "watch.missing", "path": str(inbox)})
                continue
            self._watched.add(inbox)

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)
