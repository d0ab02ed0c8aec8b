"""The worker's end of its link to the daemon."""

from __future__ import annotations

import os

import threading

import pytest

from daemon.procs import _Link


class _BrokenConn:
    """A connection whose ``recv`` fails as a real one does when its end is closed mid-call."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def recv(self) -> object:
        raise self.exc

    def send(self, msg: object) -> None:
        pass


@pytest.mark.parametrize("exc", [EOFError(), OSError("handle is closed"), TypeError("'NoneType' object cannot be interpreted as an integer")])
def test_a_link_that_fails_stops_the_worker_without_a_traceback(exc: BaseException) -> None:
    escaped: list[BaseException] = []
    before = threading.excepthook
    threading.excepthook = lambda args: escaped.append(args.exc_value)  # type: ignore[assignment]
    try:
        stop, wake = threading.Event(), threading.Event()
        _Link(_BrokenConn(exc), stop, wake)  # type: ignore[arg-type]
        assert stop.wait(5) and wake.wait(5)
        for reader in [t for t in threading.enumerate() if t.name == "parent-link"]:
            reader.join(5)
    finally:
        threading.excepthook = before
    assert escaped == []


def test_a_zombie_is_not_alive_so_its_leases_go_back_at_once():
    import subprocess
    import sys

    from daemon.procs import pid_alive

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert pid_alive(child.pid)
        child.kill()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped: a zombie
        assert not pid_alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not pid_alive(child.pid)


def test_a_sigkill_is_a_kill_from_outside_only_when_the_out_of_memory_killer_did_nothing(monkeypatch, tmp_path):
    import signal

    from daemon import platform
    from daemon.platform import linux
    from daemon.procs import WorkerProcess

    vmstat = tmp_path / "vmstat"
    vmstat.write_text("nr_free_pages 1\noom_kill 7\n")
    assert linux.oom_kills(vmstat) == 7
    assert linux.oom_kills(tmp_path / "missing") is None
    w = WorkerProcess.__new__(WorkerProcess)
    w.oom_kills_at_start = 7
    monkeypatch.setattr(platform, "oom_kills", lambda: 7)
    assert w.killed_from_outside(-signal.SIGKILL)
    assert not w.killed_from_outside(-signal.SIGSEGV) and not w.killed_from_outside(-signal.SIGABRT)
    monkeypatch.setattr(platform, "oom_kills", lambda: 8)  # the kernel ended a process for its memory meanwhile
    assert not w.killed_from_outside(-signal.SIGKILL)
    w.oom_kills_at_start = None  # unknown (macOS): a SIGKILL may be the memory's doing
    assert not w.killed_from_outside(-signal.SIGKILL)
