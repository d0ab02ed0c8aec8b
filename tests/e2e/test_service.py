"""Behaving as a background service: SIGTERM saves the place, doctor names what is broken, the agent renders."""

import os
import plistlib
import re
import shutil
import signal
import time

import pytest

from tests import speech
from tests.e2e.helpers import job, wait_for


@pytest.mark.timeout(300)
def test_sigterm_during_a_long_file_saves_its_place_exits_0_and_the_next_start_resumes(tree):
    tree.config.write_text(tree.config.read_text().replace("batch_size: 8", "batch_size: 2"))
    samples, reference = speech.concat(speech.clips() * 2, gap=0.7)  # about 5 minutes
    speech.write(tree.inbox / "lecture.m4a", samples)
    proc = tree.popen("run")
    try:
        wait_for(lambda: (job(tree, "lecture.m4a") or {}).get("progress", 0) > 0, timeout=120, proc=proc, what="progress")
    finally:
        asked = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    took = time.monotonic() - asked
    assert proc.returncode == 0, out
    assert took < 20, f"took {took:.1f} s to stop; launchd kills after 20 s"
    saved = job(tree, "lecture.m4a")
    assert saved["state"] == "queued" and 0 < saved["progress"] < 1
    assert (tree.inbox / "lecture.m4a").exists() and tree.files(tree.outbox) == []

    again = tree.run("run", "--drain")
    assert again.returncode == 0, again.stderr
    assert "resuming at" in again.stderr
    assert speech.wer(reference, (tree.outbox / "lecture.txt").read_text()) < 0.15
    assert tree.files(tree.archive) == ["lecture.m4a"]


def test_doctor_reports_each_broken_thing_and_exits_nonzero(tree):
    probe = tree.root / "thermal-state"
    probe.write_text("very hot\n")
    tree.config.write_text(tree.config.read_text().replace("source: none", f"source: file:{probe}"))
    os.rmdir(tree.inbox)
    result = tree.run("doctor")
    assert result.returncode != 0
    lines = result.stdout.splitlines()
    fails = [line for line in lines if "FAIL" in line]
    assert any("inbox" in line.lower() for line in fails), result.stdout
    assert any("thermal" in line.lower() for line in fails), result.stdout
    assert any(line.startswith("OK") or " OK " in line or "OK" in line.split()[:2] for line in lines), result.stdout


def test_doctor_passes_on_a_good_setup(tree):
    result = tree.run("doctor")
    assert "FAIL" not in result.stdout, result.stdout


def test_agent_plist_is_rendered_with_plistlib_and_touches_nothing(tree):
    result = tree.run("agent", "plist")
    assert result.returncode == 0, result.stderr
    plist = plistlib.loads(result.stdout.encode())
    assert plist["ProgramArguments"][1:] == ["run", "--config", str(tree.config)]
    assert os.path.isabs(plist["ProgramArguments"][0])
    assert plist["KeepAlive"] == {"SuccessfulExit": False} and plist["RunAtLoad"] is True
    assert plist["ThrottleInterval"] >= 30 and plist["Nice"] >= 5 and plist["ProcessType"] == "Background"
    assert "/opt/homebrew/bin" in plist["EnvironmentVariables"]["PATH"]
    assert not (tree.root / "home" / "Library").exists()


@pytest.mark.timeout(300)
def test_sighup_reloads_the_config_and_a_bad_one_is_reported_and_ignored(tree):

    good = tree.config.read_text()
    proc = tree.popen("run")
    try:
        wait_for(lambda: (tree.root / "state" / "daemon.json").exists(), timeout=60, proc=proc, what="start-up")
        log = tree.root / "home" / ".local" / "state" / "whisperd" / "whisperd.log"
        tree.config.write_text(good + "\nnot_a_setting: 1\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "not_a_setting" in log.read_text(), timeout=60, proc=proc, what="the bad config to be reported")
        tree.config.write_text(good.replace("    failed: failed\n", "    failed: failed\n    formats: [txt]\n"))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in log.read_text(), timeout=60, proc=proc, what="the reload")
        shutil.copy(speech.DATA / "ls_1988-24833-0003.flac", tree.inbox / "memo.flac")
        wait_for(lambda: (tree.archive / "memo.flac").exists(), timeout=120, proc=proc, what="the file to be done")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert tree.files(tree.outbox) == ["memo.txt"]
    assert "the old one stays in force" in out


@pytest.mark.timeout(300)
def test_files_waiting_at_start_up_start_the_worker_and_its_model_while_they_settle(tree):
    """With a long settle time, a recording already in the inbox when whisperd starts has its
    worker started and the model loaded before it is queued; it is then transcribed as usual."""
    tree.config.write_text(tree.config.read_text().replace("settle_seconds: 0.3", "settle_seconds: 8"))
    shutil.copy(speech.DATA / "ls_1988-24833-0003.flac", tree.inbox / "memo.flac")
    done = tree.run("run", "--drain", timeout=240)
    assert done.returncode == 0, done.stderr
    actions = [a for a in re.findall(r"action=(\S+)", done.stderr) if a in ("worker.start", "model.load", "job.queued", "job.done")]
    assert actions == ["worker.start", "model.load", "job.queued", "job.done"], done.stderr[-3000:]
    assert tree.files(tree.outbox) == ["memo.json", "memo.srt", "memo.txt", "memo.vtt"]
    assert tree.files(tree.archive) == ["memo.flac"]


def test_a_daemon_started_with_empty_inboxes_starts_no_worker(tree):
    proc = tree.popen("run")
    try:
        wait_for(lambda: (tree.root / "state" / "daemon.json").exists(), timeout=60, proc=proc, what="start-up")
        log = tree.root / "home" / ".local" / "state" / "whisperd" / "whisperd.log"
        wait_for(lambda: "service.start" in log.read_text(), timeout=60, proc=proc, what="the start to be logged")
        status = tree.run("status", "--json")
        assert status.returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "worker.start" not in out, out
