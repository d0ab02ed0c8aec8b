"""Streamed decoding, probing and speech chunking on real recordings."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest

from daemon.audio import (
    MAX_CHUNK_SECONDS,
    SAMPLE_RATE,
    Vad,
    iter_chunks,
    iter_pcm,
    plan_window,
    probe,
    speech_regions,
)
from daemon.errors import CorruptAudioError, NoAudioStreamError, NotAudioError
from tests import speech

SR = SAMPLE_RATE
# Several speakers, with pauses of different lengths between the utterances.
NAMES = [
    "ls_1221-135766-0001.wav",
    "ls_1988-24833-0000.flac",
    "ls_1272-141231-0002.flac",
    "ls_2412-153948-0000.flac",
    "ls_3752-4944-0001.flac",
    "ls_1272-128104-0004-8k.wav",
    "ls_61-70968-0000.flac",
    "ls_2412-153948-0001.flac",
    "ls_1988-24833-0001.flac",
]
GAPS = [0.3, 1.2, 0.6, 2.5, 0.4, 0.8, 1.7, 0.5, 0.9]


@pytest.fixture(scope="module")
def vad() -> Vad:
    return Vad()


@pytest.fixture(scope="module")
def talk() -> tuple[np.ndarray, list[tuple[float, float]]]:
    """About two minutes of real speech, and where each utterance lies."""
    parts, spans, t = [np.zeros(int(0.5 * SR), np.float32)], [], 0.5
    for name, gap in zip(NAMES, GAPS):
        clip = speech.read(name)
        spans.append((t, t + len(clip) / SR))
        t += len(clip) / SR + gap
        parts += [clip, np.zeros(int(gap * SR), np.float32)]
    return np.concatenate(parts), spans


@pytest.fixture(scope="module")
def talk_files(talk, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("talk")
    return {ext: speech.write(folder / f"talk.{ext}", talk[0]) for ext in ("wav", "mp3", "m4a", "flac")}


def _keys(chunks):
    return [(c.index, c.start, c.end) for c in chunks]


# --------------------------------------------------------------------------- probing and errors


def test_probe_a_real_clip():
    info = probe(speech.DATA / "ls_1272-141231-0002.flac")
    assert info.codec == "flac" and info.sample_rate == 16000
    assert info.duration == pytest.approx(13.335, abs=0.01)


def test_a_text_file_is_not_audio(tmp_path):
    fake = tmp_path / "notes.mp3"
    fake.write_text("these are meeting notes, not a recording\n" * 20)
    with pytest.raises(NotAudioError):
        probe(fake)
    with pytest.raises(NotAudioError):
        list(iter_chunks(fake))


def test_an_empty_file_is_not_audio(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.touch()
    with pytest.raises(NotAudioError, match="empty"):
        probe(empty)


def test_a_video_without_sound_has_no_audio_stream(tmp_path):
    path = tmp_path / "screen.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(10):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    with pytest.raises(NoAudioStreamError):
        probe(path)
    with pytest.raises(NoAudioStreamError):
        list(iter_pcm(path))


def test_a_truncated_m4a_is_corrupt(tmp_path):
    whole = speech.write(tmp_path / "whole.m4a", speech.read("ls_1221-135766-0001.wav"))
    cut = tmp_path / "cut.m4a"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # the index (moov) is at the end
    with pytest.raises(CorruptAudioError):
        probe(cut)


@pytest.mark.parametrize("ext", ["m4a", "flac"])
def test_damaged_packets_become_silence_and_keep_the_timeline(talk_files, tmp_path, ext):
    data = bytearray(talk_files[ext].read_bytes())
    rng = np.random.default_rng(3)
    for at in rng.integers(len(data) // 4, len(data) // 2, size=40):
        data[at] ^= 0xFF
    damaged = tmp_path / f"damaged.{ext}"
    damaged.write_bytes(bytes(data))
    whole = np.concatenate(list(iter_pcm(talk_files[ext])))
    hurt = np.concatenate(list(iter_pcm(damaged)))
    assert len(hurt) == pytest.approx(len(whole), abs=SR // 10)
    # the undamaged last quarter is where it was
    tail = slice(len(whole) * 3 // 4, len(whole) * 3 // 4 + 10 * SR)
    assert np.abs(hurt[tail] - whole[tail]).mean() < 1e-3


def test_a_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        probe(tmp_path / "gone.wav")


# --------------------------------------------------------------------------- decoding


def test_iter_pcm_blocks_and_resamples(tmp_path):
    clip = speech.read("ls_1272-128104-0004-8k.wav")  # 8 kHz source, resampled to 16 kHz
    blocks = list(iter_pcm(speech.DATA / "ls_1272-128104-0004-8k.wav", block_seconds=4.0))
    assert all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
    assert all(len(b) == 4 * SR for b in blocks[:-1]) and 0 < len(blocks[-1]) <= 4 * SR
    joined = np.concatenate(blocks)
    assert len(joined) == pytest.approx(29.4 * SR, abs=SR // 100)
    assert np.allclose(joined, clip, atol=1e-6)


@pytest.mark.parametrize("ext", ["wav", "mp3", "m4a"])
def test_iter_pcm_start_lands_on_the_same_samples(talk_files, ext):
    path = talk_files[ext]
    whole = np.concatenate(list(iter_pcm(path)))
    start = 61.237
    tail = np.concatenate(list(iter_pcm(path, start=start)))
    first = round(start * SR)
    assert len(tail) == len(whole) - first
    # exact for PCM; lossy codecs restart their decoder after a seek, so compare closely instead
    diff = np.abs(tail[: 5 * SR] - whole[first : first + 5 * SR])
    assert diff.mean() < (1e-7 if ext == "wav" else 5e-3)


# --------------------------------------------------------------------------- chunking


def test_chunks_cover_the_speech_and_respect_the_limit(talk, talk_files, vad):
    audio, spans = talk
    chunks = list(iter_chunks(talk_files["wav"], vad=vad, key="k"))
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(c.key == "k" for c in chunks)
    for c in chunks:
        assert 0 < c.end - c.start <= MAX_CHUNK_SECONDS
        assert len(c.audio) == round(c.end * SR) - round(c.start * SR)
        assert np.allclose(c.audio, audio[round(c.start * SR) : round(c.end * SR)], atol=1e-4)
    for a, b in zip(chunks, chunks[1:]):
        assert a.end <= b.start
    # nothing but quiet is left out: whatever of an utterance falls between chunks is near-silent
    covered = np.zeros(len(audio), bool)
    for c in chunks:
        covered[round(c.start * SR) : round(c.end * SR)] = True
    for s, e in spans:
        clip, inside = audio[round(s * SR) : round(e * SR)], covered[round(s * SR) : round(e * SR)]
        assert inside.mean() > 0.95
        if not inside.all():
            assert np.sqrt(np.mean(clip[~inside] ** 2)) < 0.1 * np.sqrt(np.mean(clip**2))
    # chunks are long: few encoder passes
    assert len(chunks) <= int(len(audio) / SR / 20) + 1


@pytest.mark.parametrize("ext", ["wav", "mp3"])  # seek per window, and one forward pass
def test_chunking_restarts_from_any_chunk_end(talk_files, vad, ext):
    path = talk_files[ext]
    chunks = list(iter_chunks(path, vad=vad))
    assert len(chunks) >= 4
    for c in chunks:
        rest = list(iter_chunks(path, start_at=c.end, first_index=c.index + 1, vad=vad))
        assert _keys(rest) == _keys([x for x in chunks if x.index > c.index])


@pytest.mark.parametrize("ext", ["flac", "m4a"])
def test_a_file_shorter_than_a_window_is_decoded_once(tmp_path, monkeypatch, vad, ext):
    # the window that reaches the end holds the rest of the file: later windows are cut from it
    import daemon.audio as audio_mod

    clip = speech.read("ls_3752-4944-0001.flac")  # 4.4 s
    gap = np.zeros(6 * SR, np.float32)  # longer than a pause carried inside a chunk: two chunks, 15 s in all
    path = speech.write(tmp_path / f"two.{ext}", np.concatenate([clip, gap, clip]))
    real = audio_mod._decode
    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(audio_mod, "_decode", counting)
    chunks = list(iter_chunks(path, vad=vad))
    assert len(chunks) == 2
    assert len(calls) == 1
    # the same chunks as a run that starts again from the first chunk's end (and decodes afresh)
    rest = list(iter_chunks(path, start_at=chunks[0].end, first_index=1, vad=vad))
    assert _keys(rest) == _keys(chunks[1:])
    assert len(calls) == 2


def test_silence_gives_no_chunks(tmp_path, vad):
    rng = np.random.default_rng(0)
    hiss = (rng.standard_normal(10 * 60 * SR) * 1e-3).astype(np.float32)  # ten minutes of faint noise
    path = speech.write(tmp_path / "quiet.flac", hiss)
    assert list(iter_chunks(path, vad=vad)) == []


def test_long_silences_are_skipped(tmp_path, vad):
    clip = speech.read("ls_1221-135766-0002.wav")
    silence = np.zeros(95 * SR, np.float32)
    path = speech.write(tmp_path / "sparse.wav", np.concatenate([silence, clip, silence, clip, silence[: 3 * SR]]))
    chunks = list(iter_chunks(path, vad=vad))
    assert len(chunks) == 2
    first = 95 + 0
    second = 95 + len(clip) / SR + 95
    assert first - 0.5 <= chunks[0].start <= first + 0.3
    assert second - 0.5 <= chunks[1].start <= second + 0.3
    assert all(c.end - c.start < len(clip) / SR + 1.0 for c in chunks)


def test_memory_does_not_grow_with_length(tmp_path, vad):
    clip = np.concatenate([speech.read("ls_2412-153948-0000.flac"), np.zeros(SR, np.float32)])

    def peak(repeats: int) -> tuple[int, int]:
        path = speech.write(tmp_path / f"long{repeats}.flac", np.tile(clip, repeats))
        tracemalloc.start()
        try:
            count = sum(1 for _ in iter_chunks(path, vad=vad))
            return count, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    short_count, short_peak = peak(10)  # about 2 minutes
    long_count, long_peak = peak(45)  # about 9.5 minutes: 36 MB as float32 if it were held whole
    assert long_count > 4 * short_count
    assert long_peak < short_peak + 2**20
    assert long_peak < 12 * 2**20


def test_restart_past_the_end_gives_nothing(talk_files, vad):
    assert list(iter_chunks(talk_files["wav"], start_at=10_000.0, vad=vad)) == []


def test_vad_sequence_model_matches_the_streaming_one(vad):
    from daemon.audio import _silero_dir

    clip = speech.read("ls_1272-141231-0002.flac")
    streaming = Vad(_silero_dir() / "silero_vad.onnx")
    assert vad.sequence and not streaming.sequence
    probs = vad.probabilities(clip)
    assert len(probs) == -(-len(clip) // Vad.FRAME)
    assert np.allclose(probs, streaming.probabilities(clip), atol=1e-5)
    assert probs.max() > 0.9 and probs[:3].max() < 0.5  # speech found, and the clip's silent lead-in is not


# --------------------------------------------------------------------------- planning a window


def _probs(seconds: float, speech_at: list[tuple[float, float]], level: float = 0.9) -> np.ndarray:
    frames = int(seconds * SR / Vad.FRAME)
    p = np.full(frames, 0.02, np.float32)
    for s, e in speech_at:
        p[int(s * SR / Vad.FRAME) : int(e * SR / Vad.FRAME)] = level
    return p


def test_regions_ignore_short_blips_and_dips():
    p = _probs(10, [(1, 1.1), (2, 4), (4.05, 6)])
    assert speech_regions(p) == [(int(2 * SR / 512), int(6 * SR / 512))]


def test_a_chunk_ends_at_the_longest_late_pause():
    n = 34 * SR
    p = _probs(34, [(1, 9), (9.3, 17), (17.9, 25), (25.2, 29), (29.3, 33)])
    plan = plan_window(p, n, eof=False, max_chunk=30 * SR)
    assert plan.start == pytest.approx(0.6 * SR, abs=Vad.FRAME)
    # the 0.9 s pause after 17 s beats the shorter ones nearer the budget's end
    assert 17 * SR <= plan.end <= 17.9 * SR


def test_speech_longer_than_the_budget_is_cut_where_quietest():
    n = 34 * SR
    p = _probs(34, [(0.5, 34)])
    dip = int(22 * SR / Vad.FRAME)
    p[dip - 1 : dip + 2] = 0.4  # quieter, but not a pause
    plan = plan_window(p, n, eof=False, max_chunk=30 * SR)
    assert plan.start == int(0.5 * SR / Vad.FRAME) * Vad.FRAME - int(0.4 * SR)  # padded before speech
    assert plan.end == pytest.approx(22 * SR, abs=3 * Vad.FRAME)


def test_the_end_of_a_file_that_fits_one_window_is_not_cut():
    # one 29 s utterance with short pauses, as a voice memo is: whole, not cut at 24 s
    p = _probs(30, [(0.5, 12), (12.3, 19), (19.3, 29.2)])
    whole = plan_window(p, 30 * SR, eof=True, max_chunk=24 * SR)
    assert whole.start == pytest.approx(0.1 * SR, abs=Vad.FRAME)
    assert whole.end == pytest.approx(29.6 * SR, abs=Vad.FRAME)
    # the same speech with the file going on is cut within the budget
    assert plan_window(p, 28 * SR, eof=False, max_chunk=24 * SR).end <= 24.1 * SR
    # more than a window's speech left, or a long pause in it: cut as usual
    assert plan_window(_probs(34, [(0.5, 33)]), 34 * SR, eof=True, max_chunk=24 * SR).end <= 24.5 * SR
    assert plan_window(_probs(30, [(0.5, 8), (14, 20)]), 30 * SR, eof=True, max_chunk=24 * SR).end <= 8.5 * SR


def test_late_speech_gets_its_own_window():
    p = _probs(34, [(10, 15)])
    plan = plan_window(p, 34 * SR, eof=False, max_chunk=30 * SR)
    assert plan.end == plan.start == 0
    assert plan.advance == pytest.approx(9.6 * SR, abs=Vad.FRAME)
