"""Safe file operations: never overwrite, never follow a link out, never leave half a file.

Publishing a finished file uses a hard link from a hidden temporary name to
the final name: ``link()`` fails when the name is taken, so two writers can
never clobber each other, and the final name appears complete or not at all.
Where a file system cannot link (some network and FAT volumes), a checked
rename is the fallback.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat as statmod
import uuid
from pathlib import Path

from daemon.errors import UnsafePathError

NAME_MAX = 255
TEMP_PREFIX = ".whisperd-"
TEMP_SUFFIX = ".tmp"


def _shorten(stem: str, reserve: int, limit: int = NAME_MAX) -> str:
    raw = stem.encode("utf-8")
    budget = max(limit - reserve, 1)
    if len(raw) <= budget:
        return stem
    return raw[:budget].decode("utf-8", errors="ignore").rstrip() or "untitled"


def fit_name(stem: str, suffix: str, limit: int = NAME_MAX) -> str:
    """``stem + suffix``, shortening the stem (never inside a UTF-8 character) to fit ``limit`` bytes."""
    return _shorten(stem, len(suffix.encode("utf-8")), limit) + suffix


def numbered(stem: str, n: int, reserve: int = 0) -> str:
    """Finder's way of naming the nth copy: ``meeting``, ``meeting (2)``, ``meeting (3)``.

    ``reserve`` bytes are kept free for a suffix, so the number is never cut off.
    """
    mark = "" if n == 1 else f" ({n})"
    return _shorten(stem, reserve + len(mark)) + mark


def split_name(name: str) -> tuple[str, str]:
    """``meeting.m4a`` → (``meeting``, ``.m4a``); a leading dot is part of the stem."""
    stem, ext = os.path.splitext(name)
    return (stem, ext) if stem else (name, "")


def free_stem(directory: Path, stem: str, suffixes: list[str]) -> str:
    """The first of ``stem``, ``stem (2)``, … for which no ``stem + suffix`` exists in ``directory``."""
    reserve = max((len(s.encode("utf-8")) for s in suffixes), default=0)
    n = 1
    while True:
        candidate = numbered(stem, n, reserve)
        if not any(os.path.lexists(directory / (candidate + s)) for s in suffixes):
            return candidate
        n += 1


def free_name(directory: Path, name: str) -> Path:
    """``directory/name``, or the first free Finder-style numbered variant of it."""
    stem, ext = split_name(name)
    return directory / (free_stem(directory, stem, [ext]) + ext)


def within(path: Path, root: Path) -> bool:
    """True when ``path`` (symlinks resolved) lies inside ``root`` (symlinks resolved)."""
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
        return True
    except ValueError:
        return False


def mirror(root: Path, rel: str) -> Path:
    """The folder under ``root`` that mirrors the subfolders of ``rel`` (a path relative to an inbox)."""
    parts = Path(rel).parts[:-1]
    if any(p in ("..", "") or os.sep in p for p in parts) or Path(rel).is_absolute():
        raise UnsafePathError(f"the path {rel!r} would lead outside {str(root)!r}")
    target = root.joinpath(*parts)
    if not within(target if target.exists() else root, root):
        raise UnsafePathError(f"the folder {str(target)!r} leads outside {str(root)!r} through a symbolic link")
    return target


def ensure_dir(path: Path, root: Path) -> Path:
    """Create ``path`` (inside ``root``) and check no link in it leads elsewhere."""
    path.mkdir(parents=True, exist_ok=True)
    if not within(path, root):
        raise UnsafePathError(f"the folder {str(path)!r} leads outside {str(root)!r} through a symbolic link")
    return path


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(directory: Path) -> Path:
    return directory / f"{TEMP_PREFIX}{uuid.uuid4().hex}{TEMP_SUFFIX}"


def publish(tmp: Path, final: Path, *, replace: bool = False) -> Path:
    """Give the complete file ``tmp`` its final name. Never overwrites unless ``replace``.

    Raises FileExistsError when ``final`` is taken and ``replace`` is False.
    """
    if replace:
        os.replace(tmp, final)
    else:
        try:
            os.link(tmp, final)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise FileExistsError(errno.EEXIST, "already exists", str(final)) from None
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
                raise
            if os.path.lexists(final):
                raise FileExistsError(errno.EEXIST, "already exists", str(final)) from None
            os.rename(tmp, final)
        else:
            os.unlink(tmp)
    fsync_dir(final.parent)
    return final


def write_atomic(directory: Path, name: str, data: bytes, *, replace: bool = False, mode: int | None = None) -> Path:
    """Write ``data`` under a hidden temporary name, fsync, then publish it as ``name``
    (over an existing file only with ``replace``), with permissions ``mode`` when given."""
    tmp = temp_path(directory)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        return publish(tmp, directory / name, replace=replace)
    finally:
        if tmp.exists():
            tmp.unlink()


def move(src: Path, dest: Path) -> Path:
    """Move ``src`` to exactly ``dest`` without overwriting anything. A symlink moves as the link itself.

    Idempotent: when a previous attempt already moved it (``src`` gone, ``dest``
    present) this returns ``dest``; when a crash left both names on one file,
    the source name is removed.
    """
    if not os.path.lexists(src):
        if os.path.lexists(dest):
            return dest
        raise FileNotFoundError(errno.ENOENT, "no such file", str(src))
    if os.path.lexists(dest):
        try:
            if os.path.samefile(src, dest) and not os.path.islink(src):
                os.unlink(src)
                fsync_dir(src.parent)
                return dest
        except OSError:
            pass
        raise FileExistsError(errno.EEXIST, "already exists", str(dest))
    try:
        if os.path.islink(src):
            os.rename(src, dest)  # checked above; links cannot be hard-linked portably
        else:
            publish_src_as(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_across(src, dest)
    fsync_dir(dest.parent)
    fsync_dir(src.parent)
    return dest


def publish_src_as(src: Path, dest: Path) -> None:
    """Same-volume move without overwrite: link to the new name, then drop the old one."""
    try:
        os.link(src, dest)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, "already exists", str(dest)) from None
        if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            if os.path.lexists(dest):
                raise FileExistsError(errno.EEXIST, "already exists", str(dest)) from None
            os.rename(src, dest)
            return
        raise
    os.unlink(src)


def _copy_across(src: Path, dest: Path) -> None:
    """Move between volumes: copy to a temporary name beside ``dest``, fsync, publish, then delete ``src``."""
    tmp = temp_path(dest.parent)
    try:
        with open(src, "rb") as fin, open(tmp, "xb") as fout:
            shutil.copyfileobj(fin, fout, 1024 * 1024)
            fout.flush()
            os.fsync(fout.fileno())
        shutil.copystat(src, tmp)
        publish(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    os.unlink(src)


def sweep_temps(directory: Path) -> int:
    """Delete temporary files a killed process left behind (hidden, never under a final name)."""
    removed = 0
    if not directory.is_dir():
        return 0
    for dirpath, _dirs, names in os.walk(directory):
        for name in names:
            if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
                try:
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
                except OSError:
                    pass
    return removed


def kind(mode: int) -> str:
    """What an ``lstat`` mode is, in words: "a file", "a named pipe", "a socket", …"""
    if statmod.S_ISREG(mode):
        return "a file"
    if statmod.S_ISDIR(mode):
        return "a folder"
    if statmod.S_ISLNK(mode):
        return "a link"
    if statmod.S_ISFIFO(mode):
        return "a named pipe"
    if statmod.S_ISSOCK(mode):
        return "a socket"
    if statmod.S_ISCHR(mode) or statmod.S_ISBLK(mode):
        return "a device"
    return "not a file"


class NotRegularFile(OSError):
    """The path names a pipe, socket, device or folder, not a file."""


def open_regular(path: Path | str) -> int:
    """A descriptor for reading the regular file at ``path``, opened so that it cannot block
    (a named pipe with no writer would hold a plain ``open()`` forever) and checked after the
    open, so a file swapped for a pipe in between is refused too. Links are not followed."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not statmod.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFile(errno.EINVAL, f"this is {kind(mode)}, not a recording", str(path))
    return fd


def content_hash(path: Path, block: int = 1024 * 1024) -> str:
    """Streamed SHA-256 of a regular file's bytes (never reads it whole into memory)."""
    h = hashlib.sha256()
    with os.fdopen(open_regular(path), "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()
