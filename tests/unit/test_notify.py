"""Batched notifications with a hand-driven clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon import config as config_mod
from daemon.notify import Notifier, Summary, summarize


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Outbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def __call__(self, title: str, message: str) -> bool:
        self.sent.append((title, message))
        return True


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def outbox():
    return Outbox()


def test_fifty_files_make_one_notification(clock, outbox):
    n = Notifier(outbox, clock=clock, interval=300, settle=5)
    for i in range(50):
        n.done(f"rec{i}.m4a")
        clock.advance(2)
        assert n.tick(queue_empty=False) is None  # still busy, interval not reached
    n.failed("broken.m4a", "not audio")
    assert n.tick(queue_empty=True) is None  # just drained: wait for the settle time in case more arrive
    clock.advance(5)
    assert n.tick(queue_empty=True) == Summary(50, 1)
    assert outbox.sent == [("whisperd", "50 recordings transcribed, 1 failed")]
    clock.advance(60)
    assert n.tick(queue_empty=True) is None  # nothing new: nothing sent
    assert len(outbox.sent) == 1


def test_a_long_queue_reports_at_most_every_interval(clock, outbox):
    n = Notifier(outbox, clock=clock, interval=300, settle=5)
    for _ in range(100):  # one file every 30 s for 50 minutes, queue never empty
        n.done("x.m4a")
        clock.advance(30)
        n.tick(queue_empty=False)
    assert len(outbox.sent) == 10
    assert all(msg == "10 recordings transcribed" for _, msg in outbox.sent)


def test_single_results_name_the_file(clock, outbox):
    n = Notifier(outbox, clock=clock, settle=0)
    n.done("Standup 2026-11-24.m4a")
    n.tick(queue_empty=True)
    n.failed("voice.memo", "This file is not audio or video that whisperd can read.")
    n.tick(queue_empty=True)
    assert [m for _, m in outbox.sent] == [
        "Standup 2026-11-24.m4a transcribed",
        "voice.memo failed: This file is not audio or video that whisperd can read.",
    ]


@pytest.mark.parametrize(
    "done, failed, text",
    [
        (2, 0, "2 recordings transcribed"),
        (1, 1, "1 recording transcribed, 1 failed"),
        (0, 3, "3 recordings failed"),
        (12, 1, "12 recordings transcribed, 1 failed"),
    ],
)
def test_summary_text(done, failed, text):
    assert summarize(["a"] * done, [("b", "")] * failed).text == text


def test_long_failure_reasons_are_cut():
    assert len(summarize([], [("a.m4a", "x" * 500)]).text) < 150


def test_notify_false_sends_nothing(tmp_path, clock, outbox):
    (tmp_path / "inbox").mkdir()
    path = tmp_path / "config.yaml"
    path.write_text("folders:\n  - inbox: inbox\nnotify: false\n")
    path.chmod(0o600)
    n = Notifier.from_config(config_mod.load(path), outbox, clock=clock)
    n.done("a.m4a")
    clock.advance(1000)
    assert n.tick(queue_empty=True) is None
    assert n.close() is None
    assert outbox.sent == [] and n.pending == 0


def test_close_sends_what_is_left(clock, outbox):
    n = Notifier(outbox, clock=clock)
    n.done("a.m4a")
    n.done("b.m4a")
    assert n.close() == Summary(2, 0)
    assert outbox.sent == [("whisperd", "2 recordings transcribed")]


def test_a_failing_sender_never_raises(clock):
    def broken(title: str, message: str) -> bool:
        raise OSError("no notification center")

    n = Notifier(broken, clock=clock, settle=0)
    n.done("a.m4a")
    assert n.tick(queue_empty=True) == Summary(1, 0, "a.m4a transcribed")
    assert n.pending == 0


def test_default_sender_is_the_platform_one():
    from daemon import platform

    assert Notifier()._send is platform.notify_sender
    assert Notifier(enabled=False).enabled is False


def test_events_from_threads_are_all_counted(clock, outbox):
    import threading

    n = Notifier(outbox, clock=clock)
    threads = [threading.Thread(target=lambda: [n.done(Path("f").name) for _ in range(200)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert n.close() == Summary(800, 0)
