"""Behaving as a background service: SIGTERM saves the place, doctor names what is broken, the agent renders."""

import os
import plistlib
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
