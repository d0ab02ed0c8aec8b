"""The MLX engine in the real daemon, on MLX's CPU backend: a job it started and saved is resumed."""

import json
import signal

import pytest

pytest.importorskip("mlx_whisper", reason="mlx-whisper is not installed (pip install '.[mlx]')")

from tests import speech  # noqa: E402
from tests.e2e.helpers import job, status, wait_for  # noqa: E402

# about 50 s of speech: two chunks or more
CLIPS = ["ls_1221-135766-0001.wav", "ls_1272-141231-0002.flac", "ls_2412-153948-0000.flac", "ls_2412-153948-0001.flac"]


@pytest.mark.timeout(600)
def test_a_job_the_mlx_engine_saved_part_of_is_resumed_where_it_stopped(tree):
    """MLX's CPU backend takes tens of seconds per window here (minutes on a busy two-core machine),
    so the daemon is stopped with the first chunk saved and the next still decoding (its worker is
    stopped, or killed after the daemon's stop timeout); the next start, on openai-whisper, takes
    the job up from MLX's checkpoint, and the transcript has every sentence once."""
    config = tree.config.read_text()
    tree.config.write_text(config.replace("batch_size: 8", "batch_size: 1\n  engine: mlx"))
    samples, reference = speech.concat(CLIPS, gap=0.8)
    speech.write(tree.inbox / "talk.flac", samples)
    proc = tree.popen("run")
    try:
        wait_for(lambda: (job(tree, "talk.flac") or {}).get("progress", 0) > 0, timeout=480, proc=proc, what="a saved chunk")
        engine = status(tree)["daemon"]["engine"]
        assert (engine["name"], engine["device"], engine["precision"], engine["note"]) == ("mlx-whisper", "cpu", "fp32", None)
        assert engine["gpu_memory_bytes"] is None  # on the CPU, RSS tells
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    saved = job(tree, "talk.flac")
    assert saved["state"] in ("queued", "running") and 0 < saved["progress"] < 1 and saved["device"] == "cpu"

    tree.config.write_text(config.replace("batch_size: 8", "batch_size: 8\n  engine: openai-whisper"))
    again = tree.run("run", "--drain")
    assert again.returncode == 0, again.stderr
    assert "resuming at" in again.stderr
    text = (tree.outbox / "talk.txt").read_text()
    assert speech.wer(reference, text) < 0.15
    assert json.loads((tree.outbox / "talk.json").read_text())["engine"] == "openai-whisper"
