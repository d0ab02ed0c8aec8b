"""Half-copied files: a job starts only after the last byte, however slowly the copy goes."""

import time

import pytest

from tests import speech
from tests.conftest import make_tree
from tests.e2e.helpers import status, wait_for


@pytest.mark.timeout(300)
def test_a_file_written_over_20_seconds_is_queued_only_after_its_last_byte(tmp_path, model_cache):
    tree = make_tree(tmp_path, model_cache)
    tree.config.write_text(tree.config.read_text().replace("settle_seconds: 0.3", "settle_seconds: 2"))
    data = speech.write(tmp_path / "source.wav", speech.read("ls_2412-153948-0000.flac")).read_bytes()
    proc = tree.popen("run")
    try:
        wait_for(lambda: (tree.root / "state" / "daemon.json").exists(), timeout=60, proc=proc, what="start-up")
        target = tree.inbox / "slow copy.wav"
        pieces = 25
        step = len(data) // pieces + 1
        started = time.time()
        with open(target, "wb") as f:
            for i in range(pieces):  # like a copy over a slow network: a piece every 0.8 s
                f.write(data[i * step : (i + 1) * step])
                f.flush()
                time.sleep(0.8)
                assert status(tree)["jobs"] == [], f"queued while still being written ({i + 1}/{pieces})"
        last_byte = time.time()
        assert last_byte - started >= 20
        wait_for(lambda: (tree.archive / "slow copy.wav").exists(), timeout=120, proc=proc, what="the job to finish")
    finally:
        proc.send_signal(__import__("signal").SIGTERM)
        proc.communicate(timeout=30)
    jobs = status(tree)["jobs"]
    assert len(jobs) == 1 and jobs[0]["state"] == "done"
    assert jobs[0]["created_at"] >= last_byte and jobs[0]["started_at"] >= last_byte
    assert (tree.archive / "slow copy.wav").read_bytes() == data
    assert speech.wer(speech.manifest()["ls_2412-153948-0000.flac"], (tree.outbox / "slow copy.txt").read_text()) < 0.25
