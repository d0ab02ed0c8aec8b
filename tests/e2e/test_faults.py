"""Faults of the machine, not of a file: things in an inbox that are not files, a model that
cannot be had, a folder that cannot be written, a locked database. None of them fails a file."""

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess

import pytest

from tests import speech
from tests.e2e.helpers import job, status, wait_for

CLIP = "ls_1988-24833-0002.flac"


@pytest.mark.timeout(180)
def test_a_named_pipe_and_a_socket_in_the_inbox_change_nothing(tree):
    fake_engine(tree)
    os.mkfifo(tree.inbox / "x.wav")  # opening it for reading would wait for a writer forever
    (tree.inbox / "sub").mkdir()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cwd = os.getcwd()
    os.chdir(tree.inbox / "sub")  # a short relative name: socket paths are limited to ~100 bytes
    try:
        sock.bind("s.m4a")
    finally:
        os.chdir(cwd)
    shutil.copy(speech.DATA / CLIP, tree.inbox / "memo.flac")
    try:
        result = tree.run("run", "--drain", timeout=150)
    finally:
        sock.close()
    assert result.returncode == 0, result.stderr
    assert (tree.outbox / "memo.txt").read_text().strip()
    assert tree.files(tree.failed) == []
    assert [j["name"] for j in status(tree)["jobs"]] == ["memo.flac"]
    assert (tree.inbox / "x.wav").exists() and (tree.inbox / "sub" / "s.m4a").exists()  # left alone
    log = result.stdout + result.stderr
    assert log.count("x.wav: it is a named pipe") == 1, log
    assert log.count("s.m4a: it is a socket") == 1, log


def paused(tree, words):
    """The daemon's status, once its reason contains ``words``."""
    def check():
        daemon = status(tree)["daemon"]
        return daemon if words in (daemon.get("reason") or "") else None
    return check


@pytest.mark.timeout(240)
def test_a_model_that_cannot_be_had_leaves_every_file_waiting_says_why_and_a_reload_goes_on(tree, model_cache):
    good = tree.config.read_text()
    missing = tree.root / "models" / "small.pt"
    tree.config.write_text(good.replace("name: tiny.en", f"name: {missing}"))
    shutil.copy(speech.DATA / CLIP, tree.inbox / "memo.flac")
    shutil.copy(speech.DATA / "ls_1988-24833-0000.flac", tree.inbox / "second.flac")
    proc = tree.popen("run")
    try:
        daemon = wait_for(paused(tree, "paused: model"), timeout=120, proc=proc, what="the pause for the model")
        assert str(missing) in daemon["reason"] and "whisperd doctor" in daemon["reason"]
        assert [f["cause"] for f in daemon["faults"]] == ["model"]
        jobs = status(tree)["jobs"]
        assert sorted(j["name"] for j in jobs) == ["memo.flac", "second.flac"]
        assert all(j["state"] == "queued" and j["attempts"] == 0 for j in jobs), jobs
        assert tree.files(tree.failed) == [] and tree.files(tree.inbox) == ["memo.flac", "second.flac"]
        plain = tree.run("status").stdout
        assert "paused: model" in plain, plain

        tree.config.write_text(good)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: all(j["state"] == "done" for j in status(tree)["jobs"]), timeout=180, proc=proc,
                 what="both files transcribed after the reload")
        assert status(tree)["daemon"]["faults"] == []
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert tree.files(tree.failed) == []
    assert (tree.outbox / "memo.txt").read_text().strip() and (tree.outbox / "second.txt").read_text().strip()
    assert out.count("paused: model") == 1, out  # said once, not once per file or per look


@pytest.mark.timeout(120)
def test_a_drain_with_a_model_that_cannot_be_had_stops_with_the_files_waiting(tree):
    tree.config.write_text(tree.config.read_text().replace("name: tiny.en", f"name: {tree.root / 'nowhere.pt'}"))
    shutil.copy(speech.DATA / CLIP, tree.inbox / "memo.flac")
    result = tree.run("run", "--drain", timeout=100)
    assert result.returncode == 75, result.stderr  # EX_TEMPFAIL: try again later
    assert "stopping with work left: paused: model" in result.stdout + result.stderr
    assert [j["state"] for j in status(tree)["jobs"]] == ["queued"]
    assert tree.files(tree.failed) == [] and tree.files(tree.inbox) == ["memo.flac"]


def fake_engine(tree):
    """The deterministic engine shipped for tests: what is tested here is around the model, not in it."""
    tree.config.write_text(tree.config.read_text().replace("  name: tiny.en\n", "  name: tiny.en\n  engine: fake\n"))
    return tree


@pytest.fixture
def small_disk(tree):
    """A real file system of its own (a 1 MB tmpfs) mounted as the output folder."""
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tree.outbox)], capture_output=True, text=True)
    assert mount.returncode == 0, f"this test needs root to mount a tmpfs: {mount.stderr}"
    try:
        yield tree.outbox
    finally:
        subprocess.run(["umount", "-l", str(tree.outbox)], check=False)


@pytest.mark.timeout(180)
def test_an_output_disk_read_only_then_full_pauses_the_work_and_it_goes_on_once_it_can_be_written(tree, small_disk):
    fake_engine(tree)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    shutil.copy(speech.DATA / CLIP, tree.inbox / "memo.flac")
    proc = tree.popen("run")
    try:
        daemon = wait_for(paused(tree, "read-only"), timeout=120, proc=proc, what="the pause for the read-only folder")
        assert str(tree.outbox) in daemon["reason"]
        [j] = status(tree)["jobs"]
        assert j["state"] == "queued" and j["attempts"] == 0, j
        assert tree.files(tree.failed) == [] and tree.files(tree.inbox) == ["memo.flac"]

        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
        filler = small_disk / "filler.bin"  # writable now, but full
        with open(filler, "wb") as f:
            try:
                f.write(b"\0" * 1024 * 1024)
            except OSError:
                pass
        wait_for(paused(tree, "is full"), timeout=120, proc=proc, what="the pause for the full disk")
        [j] = status(tree)["jobs"]
        assert j["state"] == "queued" and j["attempts"] == 0, j
        assert tree.files(tree.inbox) == ["memo.flac"]  # the original stays where it was
        assert [p.name for p in small_disk.iterdir()] == ["filler.bin"]  # no half-written output

        filler.unlink()
        wait_for(lambda: status(tree)["jobs"][0]["state"] == "done", timeout=120, proc=proc, what="the file done")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert (tree.outbox / "memo.txt").read_text().strip()
    assert tree.files(tree.archive) == ["memo.flac"] and tree.files(tree.failed) == []


@pytest.mark.timeout(180)
def test_a_database_locked_by_another_program_pauses_the_work_and_it_goes_on_when_freed(tree):
    fake_engine(tree)
    tree.config.write_text(tree.config.read_text().replace("  retry_base_seconds: 0.5\n",
                                                           "  retry_base_seconds: 0.5\n  database_wait_seconds: 1\n"))
    proc = tree.popen("run")
    try:
        wait_for(lambda: status(tree)["daemon"].get("running"), timeout=60, proc=proc, what="the daemon to start")
        other = sqlite3.connect(tree.root / "state" / "queue.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another program takes the write lock and keeps it
        try:
            shutil.copy(speech.DATA / CLIP, tree.inbox / "memo.flac")
            wait_for(paused(tree, "another program has kept it locked"), timeout=60, proc=proc,
                     what="the pause for the locked database")
            assert status(tree)["jobs"] == [] and tree.files(tree.inbox) == ["memo.flac"]
        finally:
            other.execute("ROLLBACK")
            other.close()
        wait_for(lambda: [j["state"] for j in status(tree)["jobs"]] == ["done"], timeout=120, proc=proc,
                 what="the file done once the lock is gone")
        assert status(tree)["daemon"]["faults"] == []
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert (tree.outbox / "memo.txt").read_text().strip() and tree.files(tree.failed) == []


@pytest.mark.timeout(300)
def test_an_inbox_disk_unplugged_mid_job_holds_the_job_with_its_place_and_it_goes_on_when_back(tree):
    """The inbox is a disk of its own (a tmpfs) mounted there: unmounted while a long file is read,
    then mounted again. The job waits with its checkpoint and no strike, and is not failed as deleted."""
    fake_engine(tree)  # one window a batch, a second each: time to unplug the disk between two
    tree.config.write_text(tree.config.read_text().replace("batch_size: 8", "batch_size: 1\n  fake_seconds_per_batch: 1"))
    disk = tree.root / "usb"
    disk.mkdir()
    assert subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)]).returncode == 0, "needs root"
    try:
        audio, _ = speech.concat(speech.clips(), gap=0.7)  # 2.3 minutes: five windows
        speech.write(disk / "lecture.flac", audio)
        subprocess.run(["mount", "--bind", str(disk), str(tree.inbox)], check=True)
        proc = tree.popen("run")
        try:
            wait_for(lambda: 0 < ((job(tree, "lecture.flac") or {}).get("progress") or 0) < 0.6, timeout=180, every=0.05,
                     proc=proc, what="the long file under way")
            subprocess.run(["umount", "-l", str(tree.inbox)], check=True)  # unplugged
            daemon = wait_for(paused(tree, "is not there"), timeout=60, proc=proc, what="the pause for the inbox")
            assert str(tree.inbox) in daemon["reason"]
            j = job(tree, "lecture.flac")
            assert j["state"] == "queued" and 0 < j["progress"] < 1, j
            assert tree.files(tree.failed) == [] and tree.files(tree.archive) == []
            subprocess.run(["mount", "--bind", str(disk), str(tree.inbox)], check=True)  # plugged in again
            wait_for(lambda: (job(tree, "lecture.flac") or {}).get("state") == "done", timeout=180, proc=proc,
                     what="the file done once its disk is back")
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        assert re.search(r"resuming at [1-9]\d* s", out), out[-3000:]
        assert tree.files(tree.failed) == [] and tree.files(tree.archive) == ["lecture.flac"]
        assert (tree.outbox / "lecture.txt").read_text().strip()
    finally:
        subprocess.run(["umount", "-l", str(tree.inbox)], capture_output=True)
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.timeout(180)
def test_an_inbox_whose_disk_is_away_at_start_is_not_made_again_and_its_files_go_on_when_back(tree):
    """whisperd saw the inbox once; at its next start the disk is away. Making the folder again
    would put it on the Mac's own disk (under an empty mount point): it waits for it instead."""
    fake_engine(tree)
    first = tree.run("run", "--drain", timeout=60)  # the folders as they were: seen
    assert first.returncode == 0, first.stderr
    away = tree.root / "unplugged"
    tree.inbox.rename(away)
    proc = tree.popen("run")
    try:
        daemon = wait_for(paused(tree, "is not there"), timeout=60, proc=proc, what="the pause for the inbox")
        assert str(tree.inbox) in daemon["reason"]
        assert not tree.inbox.exists()
        shutil.copy(speech.DATA / CLIP, away / "memo.flac")
        away.rename(tree.inbox)  # plugged in again, with a recording on it
        wait_for(lambda: (job(tree, "memo.flac") or {}).get("state") == "done", timeout=120, proc=proc,
                 what="the file on the disk that came back done")
        assert status(tree)["daemon"]["faults"] == []
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert "was there before and is not now" in out, out[-3000:]
    assert (tree.outbox / "memo.txt").read_text().strip() and tree.files(tree.archive) == ["memo.flac"]
