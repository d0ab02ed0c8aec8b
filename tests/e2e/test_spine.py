"""The real `whisperd` CLI on a temporary folder tree, with real speech and the real tiny.en model."""

import json
import re
import shutil
import signal
import time

import pytest

from tests import speech

TIMESTAMP = re.compile(r"(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)")


def srt_times(text: str) -> list[tuple[float, float]]:
    out = []
    for m in TIMESTAMP.finditer(text):
        h1, m1, s1, ms1, h2, m2, s2, ms2 = map(int, m.groups())
        out.append((h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000))
    return out


@pytest.fixture(scope="module")
def meeting():
    """Six utterances of four speakers, one second apart: about 80 s."""
    names = ["ls_1221-135766-0002.wav", "ls_1988-24833-0001.flac", "ls_2412-153948-0000.flac",
             "ls_3752-4944-0001.flac", "ls_61-70968-0000.flac", "ls_1272-141231-0002.flac"]
    return speech.concat(names, gap=1.0)


def test_dropped_files_become_transcripts_subtitles_and_archived_originals(tree, meeting):
    samples, reference = meeting
    speech.write(tree.inbox / "meeting.m4a", samples)
    (tree.inbox / "interviews" / "2026").mkdir(parents=True)
    clip = "ls_1988-24833-0000.flac"
    shutil.copy(speech.DATA / clip, tree.inbox / "interviews" / "2026" / "memo.flac")
    (tree.inbox / "notes.mp3").write_text("These are my meeting notes, not a recording.\n")

    result = tree.run("run", "--drain")
    assert result.returncode == 0, result.stderr

    # transcripts and subtitles, mirroring subfolders
    assert tree.files(tree.outbox) == sorted(
        [f"meeting.{e}" for e in ("json", "srt", "txt", "vtt")]
        + [f"interviews/2026/memo.{e}" for e in ("json", "srt", "txt", "vtt")]
    )
    text = (tree.outbox / "meeting.txt").read_text()
    assert speech.wer(reference, text) < 0.15, text
    assert speech.wer(speech.manifest()[clip], (tree.outbox / "interviews/2026/memo.txt").read_text()) < 0.25

    # subtitle times: offsets into the whole file, monotonic, inside the audio
    duration = len(samples) / speech.SR
    times = srt_times((tree.outbox / "meeting.srt").read_text())
    assert len(times) >= 6
    assert all(0 <= a < b <= duration + 0.5 for a, b in times)
    assert all(b1 <= a2 + 1e-6 for (_, b1), (a2, _) in zip(times, times[1:]))
    assert times[-1][1] > duration * 0.8  # not the last chunk's times alone
    vtt = (tree.outbox / "meeting.vtt").read_text()
    assert vtt.startswith("WEBVTT") and "-->" in vtt

    doc = json.loads((tree.outbox / "meeting.json").read_text())
    from daemon.engines.hardware import cpu_has_bf16

    # precision auto: the encoder in bfloat16 where this CPU multiplies it natively
    assert doc["model"] == "tiny.en" and doc["device"] == "cpu" and doc["precision"] == ("bf16" if cpu_has_bf16() else "fp32")
    assert doc["language"] == "en" and abs(doc["duration"] - duration) < 0.5 and doc["processing_seconds"] > 0
    assert [set(s) >= {"start", "end", "text"} for s in doc["segments"]] == [True] * len(doc["segments"])

    # originals archived, the non-audio file failed with a plain reason
    assert tree.files(tree.archive) == ["interviews/2026/memo.flac", "meeting.m4a"]
    assert tree.files(tree.failed) == ["notes.mp3", "notes.mp3.error.txt"]
    reason = (tree.failed / "notes.mp3.error.txt").read_text()
    assert "not audio" in reason and "Traceback" not in reason
    assert tree.files(tree.inbox) == []

    status = json.loads(tree.run("status", "--json", check=True).stdout)
    states = {j["name"]: j["state"] for j in status["jobs"]}
    assert states == {"meeting.m4a": "done", "interviews/2026/memo.flac": "done", "notes.mp3": "failed"}
    failed = next(j for j in status["jobs"] if j["state"] == "failed")
    assert failed["error"] and failed["progress"] < 1
    assert all(j["progress"] == 1.0 for j in status["jobs"] if j["state"] == "done")


def test_voice_memos_share_a_batch_by_the_windows_they_fill(tree):
    """batch_size counts 30 s windows; a memo of a few seconds fills a third of one, so five
    memos go through the model as one batch even at batch_size 2, each still transcribed."""
    tree.config.write_text(tree.config.read_text().replace("batch_size: 8", "batch_size: 2"))
    clips = ["ls_1988-24833-0000.flac", "ls_1988-24833-0002.flac", "ls_2412-153948-0002.flac",
             "ls_3752-4944-0000.flac", "ls_3752-4944-0002.flac"]
    for k, clip in enumerate(clips):
        shutil.copy(speech.DATA / clip, tree.inbox / f"memo{k}.flac")

    assert tree.run("run", "--drain").returncode == 0
    log = (tree.root / "home" / ".local" / "state" / "whisperd" / "whisperd.log").read_text()
    batches = [(int(m[0]), int(m[1])) for m in re.findall(r"action=batch .*batch of (\d+) chunks from (\d+) files", log)]
    assert batches == [(5, 5)], log
    for k, clip in enumerate(clips):
        assert speech.wer(speech.manifest()[clip], (tree.outbox / f"memo{k}.txt").read_text()) < 0.35
    assert tree.files(tree.archive) == [f"memo{k}.flac" for k in range(5)]


def test_nothing_is_overwritten(tree):
    clip = "ls_2412-153948-0002.flac"
    shutil.copy(speech.DATA / clip, tree.inbox / "talk.flac")
    (tree.outbox / "talk.srt").write_text("the user's own subtitles\n")
    (tree.archive / "talk.flac").write_bytes(b"an older recording with the same name")

    assert tree.run("run", "--drain").returncode == 0
    assert (tree.outbox / "talk.srt").read_text() == "the user's own subtitles\n"
    assert tree.files(tree.outbox) == ["talk (2).json", "talk (2).srt", "talk (2).txt", "talk (2).vtt", "talk.srt"]
    assert (tree.archive / "talk.flac").read_bytes() == b"an older recording with the same name"
    assert (tree.archive / "talk (2).flac").read_bytes() == (speech.DATA / clip).read_bytes()


def test_the_daemon_notices_a_dropped_file_and_stops_cleanly_on_sigterm(tree):
    proc = tree.popen("run")
    try:
        # the daemon is up once it has written its status file
        deadline = time.monotonic() + 120
        while not (tree.root / "state" / "daemon.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        partial = tree.inbox / "memo.flac.part"
        shutil.copy(speech.DATA / "ls_3752-4944-0000.flac", partial)
        partial.rename(tree.inbox / "memo.flac")  # as browsers and rsync do
        deadline = time.monotonic() + 120
        while not (tree.archive / "memo.flac").exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the dropped file was not processed"
            time.sleep(0.1)
        assert (tree.outbox / "memo.txt").read_text().strip()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out


def test_an_hour_of_silence_gives_an_empty_transcript_not_thank_you(tree):
    import numpy as np

    rng = np.random.default_rng(0)
    room = (rng.standard_normal(speech.SR * 120) * 0.002).astype(np.float32)  # two minutes of quiet room noise
    speech.write(tree.inbox / "silence.wav", room)
    assert tree.run("run", "--drain").returncode == 0
    assert (tree.outbox / "silence.txt").read_text().strip() == ""
    assert json.loads((tree.outbox / "silence.json").read_text())["segments"] == []
    assert tree.files(tree.archive) == ["silence.wav"]


def test_bad_config_exits_78_naming_the_key(tree):
    tree.config.write_text(tree.config.read_text() + "\nmodel_typo: 1\n")
    result = tree.run("run", "--drain")
    assert result.returncode == 78
    assert "model_typo" in result.stderr and "Traceback" not in result.stderr
