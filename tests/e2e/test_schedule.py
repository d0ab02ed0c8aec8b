"""The governor driving the real daemon: windows, immediate folders, the thermal file probe."""

import datetime as dt
import shutil
import signal
import time

import pytest

from tests import speech
from tests.conftest import make_tree
from tests.e2e.helpers import job, status, wait_for


def closed_window() -> str:
    """A one-hour window that starts two hours from now (local time): it excludes now."""
    now = dt.datetime.now()
    a, b = now + dt.timedelta(hours=2), now + dt.timedelta(hours=3)
    return f"{a:%H:%M}-{b:%H:%M}"


def test_outside_the_window_files_are_queued_but_nothing_starts_until_now_is_asked(tmp_path, model_cache):
    tree = make_tree(tmp_path, model_cache, f"""
schedule:
  windows: ["{closed_window()}"]
""")
    shutil.copy(speech.DATA / "ls_1988-24833-0002.flac", tree.inbox / "memo.flac")
    first = tree.run("run", "--drain")
    assert first.returncode == 0, first.stderr
    assert "waiting for window" in first.stderr
    assert job(tree, "memo.flac")["state"] == "queued"
    assert tree.files(tree.outbox) == [] and tree.files(tree.inbox) == ["memo.flac"]

    second = tree.run("run", "--drain", "--now")
    assert second.returncode == 0, second.stderr
    assert job(tree, "memo.flac")["state"] == "done"
    assert tree.files(tree.archive) == ["memo.flac"]


def test_an_immediate_folder_ignores_the_window(tmp_path, model_cache):
    tree = make_tree(tmp_path, model_cache, f"""
schedule:
  windows: ["{closed_window()}"]
""")
    text = tree.config.read_text().replace("""    failed: failed
""", """    failed: failed
  - inbox: rush
    output: outbox/rush
    archive: archive/rush
    failed: failed/rush
    immediate: true
""")
    tree.config.write_text(text)
    (tmp_path / "rush").mkdir()
    shutil.copy(speech.DATA / "ls_1988-24833-0002.flac", tree.inbox / "later.flac")
    shutil.copy(speech.DATA / "ls_1988-24833-0003.flac", tmp_path / "rush" / "urgent.flac")
    result = tree.run("run", "--drain")
    assert result.returncode == 0, result.stderr
    assert tree.files(tree.outbox) == [f"rush/urgent.{e}" for e in ("json", "srt", "txt", "vtt")]
    assert job(tree, "later.flac")["state"] == "queued"


@pytest.mark.timeout(300)
def test_at_critical_nothing_starts_and_back_at_nominal_it_completes(tmp_path, model_cache):
    probe = tmp_path / "thermal-state"
    probe.write_text("critical\n")
    tree = make_tree(tmp_path, model_cache, "")
    tree.config.write_text(tree.config.read_text().replace("source: none", f"source: file:{probe}\n  cooldown_seconds: 1"))
    proc = tree.popen("run")
    try:
        shutil.copy(speech.DATA / "ls_3752-4944-0002.flac", tree.inbox / "memo.flac")
        wait_for(lambda: job(tree, "memo.flac"), timeout=60, proc=proc, what="the file to be queued")
        # for 20 s it stays queued, and status says why
        until = time.monotonic() + 20
        while time.monotonic() < until:
            st = status(tree)
            assert st["jobs"][0]["state"] == "queued", st
            time.sleep(1)
        assert "thermal critical" in (status(tree)["daemon"].get("reason") or "")
        probe.write_text("nominal\n")
        wait_for(lambda: (job(tree, "memo.flac") or {}).get("state") == "done", timeout=120, proc=proc, what="the job to finish")
        assert tree.files(tree.archive) == ["memo.flac"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


@pytest.mark.timeout(400)
def test_a_long_file_pauses_at_a_chunk_boundary_when_hot_and_resumes_without_duplicates(tmp_path, model_cache):
    samples, _ = speech.concat(speech.clips(), gap=0.8)  # about 2.5 minutes
    calm = make_tree(tmp_path / "calm", model_cache)
    calm.config.write_text(calm.config.read_text().replace("batch_size: 8", "batch_size: 1"))
    speech.write(calm.inbox / "lecture.flac", samples)
    assert calm.run("run", "--drain").returncode == 0
    expected = (calm.outbox / "lecture.srt").read_text()

    probe = tmp_path / "thermal-state"
    probe.write_text("nominal\n")
    tree = make_tree(tmp_path / "hot", model_cache)
    tree.config.write_text(
        tree.config.read_text().replace("batch_size: 8", "batch_size: 1").replace("source: none", f"source: file:{probe}\n  cooldown_seconds: 1")
    )
    speech.write(tree.inbox / "lecture.flac", samples)
    proc = tree.popen("run")
    try:
        # Once the job is claimed its first batch runs; the file probe is read again at the
        # boundary after it, so the pause comes after some progress and before the end.
        wait_for(lambda: (job(tree, "lecture.flac") or {}).get("state") == "running", timeout=120, proc=proc, what="the job to start")
        probe.write_text("serious\n")
        paused = wait_for(
            lambda: (j := job(tree, "lecture.flac")) and j["state"] == "queued" and j,
            timeout=60, proc=proc, what="the job to be handed back",
        )
        assert 0 < paused["progress"] < 1  # its place is kept
        assert "thermal serious" in (status(tree)["daemon"].get("reason") or "")
        probe.write_text("nominal\n")
        wait_for(lambda: (job(tree, "lecture.flac") or {}).get("state") == "done", timeout=180, proc=proc, what="the job to finish")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "resuming at" in out
    assert (tree.outbox / "lecture.srt").read_text() == expected
