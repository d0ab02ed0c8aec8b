"""The window loop every backend shares (``transcribing.transcribe_windows``), with the prompt's
hooks and word timings, on decoded windows made up here: no model."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np

from daemon.audio import SAMPLE_RATE, Chunk
from daemon.engines.transcribing import Echo, transcribe_windows
from daemon.jobs import Word

TEXT = {1: " Anna", 2: " Kowalczyk", 3: " Kubernetes", 4: " hello", 5: " world"}
PROMPT = "Anna Kowalczyk, Kubernetes"


class Tokenizer:
    eot = 100
    timestamp_begin = 101

    def decode(self, tokens: list[int]) -> str:
        return "".join(TEXT[t] for t in tokens)


def ts(seconds: float) -> int:
    return Tokenizer.timestamp_begin + round(seconds / 0.02)


def decoded(*tokens: int) -> SimpleNamespace:
    return SimpleNamespace(tokens=list(tokens), language="en", no_speech_prob=0.01, avg_logprob=-0.2, compression_ratio=1.2)


CHUNKS = [
    Chunk(0, 10.0, 14.0, np.zeros(4 * SAMPLE_RATE, np.float32), "a"),
    Chunk(1, 20.0, 26.0, np.zeros(6 * SAMPLE_RATE, np.float32), "b"),
]
# the first window echoes the prompt, then speaks; the second is one run of text with no timestamp after the first
PROMPTED = [decoded(ts(0), 1, 2, 3, ts(1), ts(1), 4, 5, ts(3.5)), decoded(ts(0), 4, 5)]


def _run(prompt, timed=None):
    calls = {"decode": [], "without": []}

    def decode(audios):
        calls["decode"].append([len(a) for a in audios])
        return PROMPTED

    def without_prompt(audios):
        calls["without"].append([len(a) for a in audios])
        return [decoded(ts(0), 4, 5, ts(5.8))]

    results = transcribe_windows(
        CHUNKS, decode=decode, batches=lambda windows: [windows], tokenizer=lambda language: Tokenizer(),
        prompt=prompt, without_prompt=without_prompt, timed=timed,
    )
    return results, calls


def _said(results):
    return [[(s.start, s.end, s.text) for s in r.segments] for r in results]


def test_with_a_prompt_its_echo_is_dropped_and_an_untimed_window_is_decoded_again_without_it():
    results, calls = _run(PROMPT)
    assert _said(results) == [[(11.0, 13.5, "hello world")], [(20.0, 25.8, "hello world")]]
    assert calls == {"decode": [[4 * SAMPLE_RATE, 6 * SAMPLE_RATE]], "without": [[6 * SAMPLE_RATE]]}
    assert [r.language for r in results] == ["en", "en"]


def test_without_a_prompt_the_windows_are_taken_as_decoded():
    results, calls = _run(None)
    assert _said(results) == [
        [(10.0, 11.0, "Anna Kowalczyk Kubernetes"), (11.0, 13.5, "hello world")],
        [(20.0, 26.0, "hello world")],  # unclosed text runs to the chunk's end
    ]
    assert calls["without"] == []


def test_word_timings_come_from_the_hook_with_the_windows_place_in_its_batch():
    seen = []

    def timed(i, tokenizer, pieces, start, end):
        seen.append((i, [s.text for s, _ in pieces], start, end))
        return [replace(s, words=(Word(s.text, s.start, s.end, 1.0),)) for s, _ in pieces]

    results, _ = _run(PROMPT, timed)
    assert seen == [(0, ["hello world"], 10.0, 14.0), (1, ["hello world"], 20.0, 26.0)]
    assert all(len(s.words) == 1 for r in results for s in r.segments)


def test_an_echo_is_a_run_of_the_prompts_words_and_nothing_else():
    echo = Echo("Anna Kowalczyk, Kubernetes, OKR")
    assert echo("Kubernetes, OKR.") is False  # two words: fewer than three
    assert echo("Anna Kowalczyk Kubernetes") is True
    assert echo("anna kowalczyk, kubernetes, okr") is True
    assert echo("Anna met Kowalczyk at Kubernetes") is False
    assert Echo("Kubernetes")("Kubernetes") is False  # a one-word prompt may well have been said
    assert Echo(None)("Anna Kowalczyk Kubernetes") is False
