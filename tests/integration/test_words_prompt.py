"""Word timings and the vocabulary prompt, on real speech with the real tiny.en model."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest

from daemon.audio import SAMPLE_RATE, Chunk, Vad, iter_chunks
from daemon.engines.models import resolve_checkpoint
from daemon.engines.openai_whisper import OpenAIWhisperEngine
from daemon.jobs import Checkpoint
from tests import speech

# four speakers, 0.8 s apart: about 40 s, three chunks
NAMES = ["ls_1272-141231-0002.flac", "ls_2412-153948-0001.flac", "ls_1988-24833-0001.flac", "ls_61-70968-0000.flac"]
GAP = 0.8
PROMPT = "Anna Kowalczyk, Kubernetes, OKR"


@pytest.fixture(scope="module")
def engine(model_cache):
    e = OpenAIWhisperEngine(resolve_checkpoint("tiny.en", model_cache), device="cpu", precision="auto", batch_size=8,
                            name="tiny.en", fit_windows=True)
    yield e
    e.close()


@pytest.fixture(scope="module")
def talk(tmp_path_factory):
    audio, reference = speech.concat(NAMES, gap=GAP)
    path = speech.write(tmp_path_factory.mktemp("talk") / "talk.flac", audio)
    starts, t = [], 0.0
    for n in NAMES:  # where each utterance begins in the file
        starts.append(t)
        t += len(speech.read(n)) / SAMPLE_RATE + GAP
    return list(iter_chunks(path, vad=Vad(), key="talk")), reference, starts


def words_of(text):
    return re.findall(r"[\w']+", text.lower())


def test_words_are_timed_inside_their_segments_and_offset_into_the_file(engine, talk):
    chunks, reference, starts = talk
    plain = engine.transcribe(chunks, language="en", task="transcribe")
    timed = engine.transcribe(chunks, language="en", task="transcribe", words=True)
    text = " ".join(s.text for r in timed for s in r.segments)
    # the same text as without word timings
    assert text == " ".join(s.text for r in plain for s in r.segments)
    assert speech.wer(reference, text) < 0.1
    every = []
    for chunk, r in zip(chunks, timed):
        for seg in r.segments:
            assert seg.words, seg
            assert "".join(w.word for w in seg.words).strip() == seg.text
            assert all(chunk.start <= w.start <= w.end <= chunk.end for w in seg.words)
            assert seg.start <= seg.words[0].start + 0.5 and seg.words[-1].end <= seg.end + 0.5
            assert all(0 <= w.probability <= 1 for w in seg.words)
            every += seg.words
    assert all(a.start <= b.start for a, b in zip(every, every[1:]))
    # each utterance's first word starts where that utterance starts in the file (within 0.6 s),
    # found by its first word in the reference
    for name, start in zip(NAMES, starts):
        first = speech.manifest()[name].split()[0].lower()
        candidates = [w.start for w in every if words_of(w.word) == [first] and abs(w.start - start) < 3]
        assert candidates and min(abs(c - start) for c in candidates) < 0.6, (name, start, candidates)
    # a checkpoint keeps them
    cp = Checkpoint(offset=chunks[-1].end, segments=tuple(s for r in timed for s in r.segments), language="en")
    assert Checkpoint.from_json(cp.to_json()) == cp


def test_a_prompt_never_shows_up_over_noise_or_a_word_or_two(engine, talk):
    chunks, _, _ = talk
    rng = np.random.default_rng(1)
    hiss = (rng.standard_normal(6 * SAMPLE_RATE) * 3e-3).astype(np.float32)
    word = chunks[0].audio[: int(0.9 * SAMPLE_RATE)].copy()  # "The cut", about
    hum = (0.01 * np.sin(2 * np.pi * 120 * np.arange(4 * SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32)
    probes = [Chunk(0, 0.0, 6.0, hiss), Chunk(1, 6.0, 6.9, word), Chunk(2, 7.0, 11.0, hum)]
    results = engine.transcribe(probes, language="en", task="transcribe", prompt=PROMPT)
    said = {w for r in results for s in r.segments for w in words_of(s.text)}
    assert not said & set(words_of(PROMPT)), said


def test_a_prompt_keeps_all_the_speech_of_a_long_chunk(engine, talk):
    """Given a list of names, tiny.en wrote the second chunk's first 12 s as one run of text
    without timestamps and stopped there; the window is decoded again without the prompt."""
    chunks, reference, _ = talk
    results = engine.transcribe(chunks, language="en", task="transcribe", prompt=PROMPT)
    assert speech.wer(reference, " ".join(s.text for r in results for s in r.segments)) < 0.1


def test_a_prompt_past_the_budget_keeps_its_end_and_is_said_once(engine, talk, caplog):
    chunks, reference, _ = talk
    long = ", ".join(f"term{i}" for i in range(150)) + ", " + PROMPT
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            results = engine.transcribe(chunks[:1], language="en", task="transcribe", prompt=long)
    warned = [r.getMessage() for r in caplog.records if "prompt" in r.getMessage()]
    assert len(warned) == 1 and "223" in warned[0] and "Kubernetes, OKR" in warned[0], warned
    assert speech.wer(speech.manifest()[NAMES[0]], " ".join(s.text for s in results[0].segments)) < 0.2
