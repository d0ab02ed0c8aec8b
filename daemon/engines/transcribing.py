"""What every Whisper backend does above its model: a batch of chunks becomes windows, each
decoded window becomes timestamped segments, a window whose text looks wrong is decoded
again warmer, and a window the model left unfinished is decoded again from where it stopped.

The backends (openai-whisper on torch, mlx-whisper on MLX) differ below this: how a batch
of windows is encoded and decoded. They hand in their decoding as functions, and get back
the same segments, with times in seconds into the whole file. (openai-whisper also hands in its
prompt, decoding without it, and word timings.) Nothing here imports
torch, MLX or whisper; a decoded window is anything with whisper's ``DecodingResult``
fields (``tokens``, ``language``, ``avg_logprob``, ``no_speech_prob``, ``compression_ratio``)
and a tokenizer anything with whisper's ``Tokenizer`` attributes.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from daemon.audio import SAMPLE_RATE, Chunk
from daemon.engines.base import ChunkResult
from daemon.jobs import Segment

# The quality guards of whisper.transcribe, kept.
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
COMPRESSION_RATIO_THRESHOLD = 2.4
LOGPROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
# Beyond whisper.transcribe: VAD already chose speech, so a window the model is this sure holds
# none is noise, whatever it made up for it ("you", "Thank you."). Real speech scores below 0.1.
NO_SPEECH_ALONE = 0.9
SAMPLING_SEED = 0  # fallback sampling is seeded, so the same chunk always gives the same text
MIN_REST_SECONDS = 1.0  # audio left after the model stopped mid-text that is worth another window
TOKENS_PER_SECOND = 16  # more than any language is spoken at, timestamps included
MIN_OPENED_SECONDS = 0.5  # audio left after the model opened a segment and stopped: a last word fits in it
WORDS_PER_SECOND = 4  # more than anyone says: a short window with more words heard them in noise
MIN_SKIPPED_SECONDS = 2.0  # audio left after the model closed its last segment that must be speech it skipped
MAX_WINDOWS_PER_CHUNK = 4  # a chunk is at most 30 s; each window moves on by a segment or more
MEL_PAD_SAMPLES = 1600  # zeros after a window's audio before its spectrogram: 10 frames, more than the 2.5 a frame spans
LEAVE_SHARE = 4  # rows whose text ended leave a decoding batch once they are a quarter of it
TIME_STEP = 0.02  # seconds per timestamp token: two mel frames of 160 samples at 16 kHz

Window = tuple[int, int]  # (which chunk of the batch, samples into it)


def token_limit(seconds: float, most: int) -> int:
    """The most tokens worth decoding for a window of ``seconds`` of audio (``most``: whisper's
    own, half its text context). A short window (the last word of a chunk, decoded again on its
    own) cannot hold more; without a limit, a window the model starts to hallucinate in would
    run to ``most`` tokens and every fallback temperature after it."""
    return min(most, 16 + int(np.ceil(TOKENS_PER_SECOND * seconds)))


def needs_fallback(r: Any) -> bool:
    """Whether a decoded window's text looks wrong enough to decode it again, warmer."""
    if r.no_speech_prob > NO_SPEECH_THRESHOLD and r.avg_logprob < LOGPROB_THRESHOLD:
        return False  # silence: a retry would only invent words
    return r.compression_ratio > COMPRESSION_RATIO_THRESHOLD or r.avg_logprob < LOGPROB_THRESHOLD


def is_silence(r: Any) -> bool:
    if r.no_speech_prob > NO_SPEECH_ALONE:
        return True
    return r.no_speech_prob > NO_SPEECH_THRESHOLD and r.avg_logprob < LOGPROB_THRESHOLD


def with_fallback(count: int, decode: Callable[[list[int], float], Sequence[Any]]) -> list[Any]:
    """``count`` windows decoded greedily (or by beam) first; only those whose text looks wrong
    are decoded again, at rising temperatures, as whisper.transcribe does. ``decode(rows,
    temperature)`` decodes the windows numbered ``rows`` and returns their results in order."""
    results: list[Any] = [None] * count
    todo = list(range(count))
    for temperature in TEMPERATURES:
        retry = []
        for i, r in zip(todo, decode(todo, temperature)):
            results[i] = r
            if temperature < TEMPERATURES[-1] and needs_fallback(r):
                retry.append(i)
        todo = retry
        if not todo:
            break
    return results


Pieces = list[tuple[Segment, list[int]]]  # a window's segments, each with its text tokens


def transcribe_windows(
    chunks: Sequence[Chunk],
    *,
    decode: Callable[[list[np.ndarray]], Sequence[Any]],
    batches: Callable[[list[Window]], Iterable[list[Window]]],
    tokenizer: Callable[[str | None], Any],
    prompt: str | None = None,
    without_prompt: Callable[[list[np.ndarray]], Sequence[Any]] | None = None,
    timed: Callable[[int, Any, Pieces, float, float], list[Segment]] | None = None,
) -> list[ChunkResult]:
    """Each chunk is one window, batched with the others; where the model stops with speech
    left (whisper.transcribe would go on from its last timestamp), the rest of the chunk is
    decoded again, batched with the other chunks' rests, at most MAX_WINDOWS_PER_CHUNK times.

    ``decode(audios)`` decodes windows (each the audio from a point of its chunk to its end)
    and returns their results in order, fallbacks included; ``batches(windows)`` splits
    windows into what the backend decodes together; ``tokenizer(language)`` reads a window's
    tokens.

    ``prompt``: the text ``decode`` gives the decoder before every window, if any. A segment
    that only repeats it is dropped (``Echo``), and the windows it left untimed (``untimed``)
    are decoded again by ``without_prompt(audios)``. ``timed(i, tokenizer, pieces, start,
    end)``: the segments of the ``i``-th window of the batch ``decode`` was last given, with
    their words timed."""
    echo = Echo(prompt)
    found: list[list[Segment]] = [[] for _ in chunks]
    languages: list[str | None] = [None] * len(chunks)
    windows: list[Window] = [(slot, 0) for slot in range(len(chunks))]
    for turn in range(MAX_WINDOWS_PER_CHUNK):
        final = turn == MAX_WINDOWS_PER_CHUNK - 1
        rest: list[Window] = []
        for batch in batches(windows):
            audios = [chunks[slot].audio[offset:] for slot, offset in batch]
            results = list(decode(audios))
            if prompt and without_prompt is not None:
                # A prompt sometimes leads the model to write a long window as one run of text
                # with no timestamp after the first, and to stop mid-window: with no timestamp
                # to go on from, the rest of its speech would be lost. Those windows are
                # decoded again without the prompt.
                begin = tokenizer(None).timestamp_begin
                lost = [i for i, r in enumerate(results) if untimed(r, len(audios[i]), begin)]
                if lost:
                    for i, r in zip(lost, without_prompt([audios[i] for i in lost])):
                        results[i] = r
            for i, ((slot, offset), r) in enumerate(zip(batch, results)):
                chunk = chunks[slot]
                languages[slot] = languages[slot] or r.language
                if is_silence(r):
                    continue
                start = chunk.start + offset / SAMPLE_RATE
                tok = tokenizer(r.language)
                pieces, resume = window_pieces(r.tokens, tok, start, chunk.end, final=final)
                pieces = [(s, t) for s, t in pieces if not echo(s.text)]
                found[slot].extend(timed(i, tok, pieces, start, chunk.end) if timed else [s for s, _ in pieces])
                if resume is not None:
                    rest.append((slot, offset + round(resume * SAMPLE_RATE)))
        windows = rest
        if not windows:
            break
    return [ChunkResult(c.index, c.start, c.end, tuple(found[slot]), languages[slot]) for slot, c in enumerate(chunks)]


_WORD = re.compile(r"\w+")


class Echo:
    """Whether a segment only repeats the prompt: Whisper, given a prompt, sometimes writes it
    out over noise or a word or two of speech. Such a segment is a run of at least three of the
    prompt's words in its order (all of them, for a shorter prompt), and nothing else, case and
    punctuation aside. A one-word prompt (or none) is never taken for an echo: that word alone
    may well have been said."""

    def __init__(self, prompt: str | None) -> None:
        self.words = _WORD.findall(prompt.lower()) if isinstance(prompt, str) else []
        self.least = min(3, len(self.words))

    def __call__(self, text: str) -> bool:
        said = _WORD.findall(text.lower())
        if len(self.words) < 2 or len(said) < self.least:
            return False
        n = len(said)
        return any(self.words[i : i + n] == said for i in range(len(self.words) - n + 1))


def untimed(r: Any, samples: int, begin: int) -> bool:
    """A window of speech worth going on from (MIN_SKIPPED_SECONDS and more) decoded as text
    with no timestamp after the opening one: where its text ends in the audio is not known.
    ``begin``: the vocabulary's first timestamp token."""
    if samples < MIN_SKIPPED_SECONDS * SAMPLE_RATE or is_silence(r) or not r.tokens:
        return False
    return sum(1 for t in r.tokens if t >= begin) <= 1


def batched(windows: list[Window], chunks: Sequence[Chunk], limit: float, share: Callable[[float], float]) -> Iterator[list[Window]]:
    """``windows`` in batches worth at most ``limit`` full windows, a window of ``s`` seconds
    counting ``share(s)``."""
    batch: list[Window] = []
    used = 0.0
    for slot, offset in windows:
        part = share((len(chunks[slot].audio) - offset) / SAMPLE_RATE)
        if batch and used + part > limit + 1e-9:
            yield batch
            batch, used = [], 0.0
        batch.append((slot, offset))
        used += part
    if batch:
        yield batch


def compact(ended: list[bool]) -> list[int]:
    """The rows of a decoding batch to keep, as an order: the rows still decoding at the front
    stay where they are, and the last ones still decoding move into the places of the ended
    rows before them. So ``[F, T, F, F, T, F]`` gives ``[0, 5, 2, 3]``: one row moves instead of four."""
    n = ended.count(False)
    movers = iter(q for q in range(n, len(ended)) if not ended[q])
    return [next(movers) if ended[p] else p for p in range(n)]


def parse_window(
    tokens: Sequence[int], tokenizer: Any, start: float, end: float, *, final: bool = False
) -> tuple[list[Segment], float | None]:
    """``window_pieces`` without the tokens."""
    pieces, resume = window_pieces(tokens, tokenizer, start, end, final=final)
    return [s for s, _ in pieces], resume


def window_pieces(
    tokens: Sequence[int], tokenizer: Any, start: float, end: float, *, final: bool = False
) -> tuple[list[tuple[Segment, list[int]]], float | None]:
    """Timestamped segments from one decoded window, as whisper.transcribe reads them, each
    with its text tokens, and where to resume: seconds after ``start``, or None when the window
    is done.

    Pairs of timestamp tokens delimit segments. A window ending in a pair (the model
    opened a segment and stopped) or in text with no closing timestamp resumes at its
    last timestamp, as does one that closed its last segment with seconds of audio
    left, unless this is the ``final`` window: then unclosed text ends at ``end``.
    Times are offset by ``start``, clamped to [start, end] and never run backwards.
    """
    begin = tokenizer.timestamp_begin
    tokens = [t for t in tokens if t >= begin or t < tokenizer.eot]
    pieces: list[tuple[float, float | None, list[int]]] = []  # (start, end or None, text tokens)
    current: list[int] = []
    seg_start: float | None = None
    last_time = 0.0
    for t in tokens:
        if t >= begin:
            time = (t - begin) * TIME_STEP
            if seg_start is None:
                seg_start = time
            elif current:
                pieces.append((seg_start, time, current))
                current, seg_start = [], None
            else:
                seg_start = time  # two timestamps in a row with nothing between: a new start
            last_time = time
        else:
            if seg_start is None:
                seg_start = last_time
            current.append(t)

    resume: float | None = None
    left = end - (start + last_time)
    stopped_at_pair = len(tokens) >= 2 and tokens[-1] >= begin and tokens[-2] >= begin
    # A closed last segment means "no more speech" to whisper.transcribe, but a chunk ends
    # where voice activity ends, so seconds of audio after it are speech the model skipped.
    # A window that ends by opening a segment heard more speech: whisper.transcribe goes on from
    # there however little is left (a chunk's last word is often under a second from its end).
    if stopped_at_pair:
        wants_more = left >= MIN_OPENED_SECONDS
    else:
        wants_more = left >= MIN_REST_SECONDS if current else left >= MIN_SKIPPED_SECONDS
    if wants_more and not final and last_time > 0:
        resume = last_time  # the unclosed text, if any, is decoded again from there
    elif current:
        pieces.append((seg_start if seg_start is not None else last_time, None, current))

    if end - start < MIN_REST_SECONDS:
        # a last word decoded on its own: more words than the moment can hold are invented
        words = sum(len(tokenizer.decode(t).split()) for _, _, t in pieces)
        if words > 1 + WORDS_PER_SECOND * (end - start):
            return [], None
    segments: list[tuple[Segment, list[int]]] = []
    floor = start
    for s, e, text_tokens in pieces:
        text = tokenizer.decode(text_tokens).strip()
        if not any(ch.isalnum() for ch in text):
            continue  # nothing but punctuation
        a = min(max(start + s, floor), end)
        b = end if e is None else min(max(start + e, a), end)
        segments.append((Segment(round(a, 3), round(b, 3), text), text_tokens))
        floor = a
    return segments, resume
