"""Bad input: each ends in failed/ with a clear reason, or is handled by design, and the daemon goes on."""

import fractions
import json
import os
import shutil
import signal
import subprocess

import av
import numpy as np
import pytest

from tests import speech
from tests.conftest import make_tree
from tests.e2e.helpers import job, status, wait_for

CLIP = "ls_1988-24833-0002.flac"
ODD_NAMES = {  # each a different recording, so none is a duplicate of another
    "team meeting 3.flac": "ls_1272-141231-0002.flac",
    "会议记录.flac": "ls_1988-24833-0000.flac",
    "🎙️ memo.flac": "ls_1988-24833-0001.flac",
    "-rf.flac": "ls_1988-24833-0003.flac",
    "it's \"quoted\".flac": "ls_2412-153948-0001.flac",
    "line\nbreak.flac": "ls_2412-153948-0002.flac",
}
LONG_NAME = "l" * 250 + ".flac"  # 255 bytes: the longest name a Mac allows


def video_without_audio(path):
    with av.open(str(path), "w") as c:
        stream = c.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 10, dtype=np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, fractions.Fraction(1, 10)
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)


@pytest.fixture(scope="module")
def ran(tmp_path_factory, model_cache):
    """One drain over an inbox full of awkward things."""
    root = tmp_path_factory.mktemp("bad")
    tree = make_tree(root, model_cache)
    inbox = tree.inbox
    (inbox / "empty.m4a").write_bytes(b"")
    mp3 = speech.write(root / "whole.mp3", speech.read(CLIP))
    data = mp3.read_bytes()
    (inbox / "truncated.mp3").write_bytes(data[: len(data) * 2 // 5])
    (inbox / "notes.mp3").write_text("shopping list: milk, eggs\n")
    (inbox / "random.wav").write_bytes(b"RIFF" + os.urandom(4000))  # starts like a WAV, is not one
    video_without_audio(inbox / "screen recording.mp4")
    for name, clip in ODD_NAMES.items():
        shutil.copy(speech.DATA / clip, inbox / name)
    shutil.copy(speech.DATA / "ls_61-70968-0000.flac", inbox / LONG_NAME)
    shutil.copy(speech.DATA / CLIP, inbox / "same.flac")
    (inbox / "copies").mkdir()
    shutil.copy(speech.DATA / CLIP, inbox / "copies" / "same again under another name.flac")
    speech.write(inbox / "same.wav", speech.read("ls_3752-4944-0000.flac"))  # different audio, same stem
    (inbox / "album.m4a").mkdir()  # a folder named like an audio file
    shutil.copy(speech.DATA / "ls_3752-4944-0001.flac", inbox / "album.m4a" / "track.flac")
    secret = root / "private" / "diary.flac"
    secret.parent.mkdir()
    shutil.copy(speech.DATA / CLIP, secret)
    (inbox / "shortcut.flac").symlink_to(secret)
    (inbox / "linked folder").symlink_to(secret.parent)
    result = tree.run("run", "--drain", timeout=600)
    assert result.returncode == 0, result.stderr
    return tree, result, secret


def error_of(tree, name):
    return (tree.failed / (name + ".error.txt")).read_text()


def test_zero_byte_file_fails_with_reason(ran):
    tree, _, _ = ran
    assert "empty" in error_of(tree, "empty.m4a")


def test_truncated_mp3_is_transcribed_as_far_as_it_goes(ran):
    tree, _, _ = ran
    assert (tree.archive / "truncated.mp3").exists()
    text = (tree.outbox / "truncated.txt").read_text()
    assert text.strip() and len(text.split()) < len(speech.manifest()[CLIP].split())


def test_text_file_named_mp3_fails_as_not_audio(ran):
    tree, _, _ = ran
    assert "not audio" in error_of(tree, "notes.mp3")


def test_damaged_wav_fails_as_damaged(ran):
    tree, _, _ = ran
    assert "damaged" in error_of(tree, "random.wav")


def test_video_without_audio_fails_with_reason(ran):
    tree, _, _ = ran
    assert "no audio track" in error_of(tree, "screen recording.mp4")


@pytest.mark.parametrize("name", sorted(ODD_NAMES))
def test_odd_names_are_transcribed_under_their_own_names(ran, name):
    tree, _, _ = ran
    stem = name.rsplit(".", 1)[0]
    assert (tree.archive / name).exists()
    assert speech.wer(speech.manifest()[ODD_NAMES[name]], (tree.outbox / f"{stem}.txt").read_text()) < 0.3


def test_the_same_recording_under_another_name_is_transcribed_once(ran):
    tree, _, _ = ran
    copy = tree.archive / "copies" / "same again under another name.flac"
    assert copy.exists()
    note = (copy.parent / (copy.name + ".duplicate.txt")).read_text()
    assert "same recording as same.flac" in note and str(tree.outbox / "same.txt") in note
    assert not (tree.outbox / "copies").exists()


def test_a_255_byte_name_keeps_every_output_within_the_limit(ran):
    tree, _, _ = ran
    assert (tree.archive / LONG_NAME).exists()
    outputs = [p.name for p in tree.outbox.iterdir() if p.name.startswith("lll")]
    assert len(outputs) == 4 and all(len(n.encode()) <= 255 for n in outputs)


def test_outputs_that_would_collide_get_finder_numbers(ran):
    tree, _, _ = ran
    assert (tree.outbox / "same.txt").exists() and (tree.outbox / "same (2).txt").exists()
    texts = {(tree.outbox / "same.txt").read_text(), (tree.outbox / "same (2).txt").read_text()}
    assert len(texts) == 2


def test_a_folder_named_like_audio_is_a_folder(ran):
    tree, _, _ = ran
    assert (tree.outbox / "album.m4a" / "track.txt").exists()
    assert (tree.archive / "album.m4a" / "track.flac").exists()


def test_a_symlink_out_of_the_inbox_is_refused_and_its_target_untouched(ran):
    tree, _, secret = ran
    assert secret.read_bytes() == (speech.DATA / CLIP).read_bytes()
    assert (tree.failed / "shortcut.flac").is_symlink()
    assert "link" in error_of(tree, "shortcut.flac")
    assert (tree.failed / "linked folder").is_symlink() and "link" in error_of(tree, "linked folder")
    assert sorted(os.listdir(secret.parent)) == ["diary.flac"]
    assert not [p for p in tree.outbox.rglob("*") if "diary" in p.name]


def test_every_failure_reason_is_one_or_two_plain_sentences(ran):
    tree, _, _ = ran
    for p in tree.failed.glob("*.error.txt"):
        text = p.read_text().strip()
        assert "Traceback" not in text and "Error:" not in text and 0 < text.count(".") <= 3, (p.name, text)


def test_the_daemon_kept_going(ran):
    tree, result, _ = ran
    jobs = status(tree)["jobs"]
    assert all(j["state"] in ("done", "failed") for j in jobs)
    assert tree.files(tree.inbox) == []


def test_a_file_deleted_after_it_was_queued(tmp_path, model_cache):
    import datetime as dt

    now = dt.datetime.now()
    window = f"{now + dt.timedelta(hours=2):%H:%M}-{now + dt.timedelta(hours=3):%H:%M}"
    tree = make_tree(tmp_path, model_cache, f'schedule:\n  windows: ["{window}"]\n')
    shutil.copy(speech.DATA / CLIP, tree.inbox / "gone.flac")
    assert tree.run("run", "--drain").returncode == 0  # queued; the window keeps it waiting
    assert job(tree, "gone.flac")["state"] == "queued"
    (tree.inbox / "gone.flac").unlink()
    assert tree.run("run", "--drain", "--now").returncode == 0
    j = job(tree, "gone.flac")
    assert j["state"] == "failed" and "moved or deleted" in j["error"]
    assert tree.files(tree.failed) == [] and tree.files(tree.archive) == []


def test_a_missing_output_folder_is_created(tree):
    shutil.rmtree(tree.outbox)
    shutil.copy(speech.DATA / CLIP, tree.inbox / "memo.flac")
    assert tree.run("run", "--drain").returncode == 0
    assert (tree.outbox / "memo.txt").exists()


def test_an_output_path_blocked_by_a_file_fails_after_retries_with_the_original_kept(tree):
    (tree.inbox / "blocked").mkdir()
    shutil.copy(speech.DATA / CLIP, tree.inbox / "blocked" / "memo.flac")
    (tree.outbox / "blocked").write_text("a file where a folder should be")
    assert tree.run("run", "--drain").returncode == 0
    assert (tree.failed / "blocked" / "memo.flac").read_bytes() == (speech.DATA / CLIP).read_bytes()
    assert "gave up after 3 tries" in error_of(tree, "blocked/memo.flac")
