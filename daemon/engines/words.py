"""Word timings (``words: true``) by whisper's own alignment, from audio features already encoded.

``whisper.timing.add_word_timestamps`` times a window's words from the cross-attention of the
alignment heads (which the converted checkpoints store, for tiny.en and base alike) while the
decoder reads the window's text once more, then applies whisper's own rules for punctuation and
over-long words. Its ``find_alignment`` gets that attention by calling ``model(mel, tokens)``,
which encodes the mel again: ``Encoded`` stands in for the model there, and is handed the
window's audio features where the mel would go, so the call runs the decoder alone. The batch's
encoder output is reused, and the alignment is whisper's, line for line.

Imported only when a folder asks for words: ``whisper.timing`` brings numba with it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
from whisper.timing import add_word_timestamps

from daemon.engines.whisper_lib import for_alignment
from daemon.jobs import Segment, Word


class Encoded:
    """What ``whisper.timing.find_alignment`` reads of the model, for audio features already
    encoded: ``model(features, tokens)`` runs the decoder on them."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.dims = model.dims
        self.decoder = model.decoder
        self.alignment_heads = model.alignment_heads

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __call__(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(tokens, features)


def align(
    model: Any, tokenizer: Any, pieces: Sequence[tuple[Segment, list[int]]], features: torch.Tensor,
    audio_frames: int, window_start: float, window_end: float,
) -> list[Segment]:
    """``pieces``' segments (times in the file) with their words timed. ``features``: the
    window's audio features (frames × state, its own frames only: no batch dimension, which
    ``find_alignment`` adds); ``audio_frames``: how many
    mel frames of the window hold audio; ``window_start``: where the window starts in the file.
    Segment and word times come back in the file, inside [window_start, window_end], as whisper
    adjusts them (a segment's ends move to its first and last word's)."""
    if not pieces:
        return []
    model, features = for_alignment(model, features)  # on the CPU for a model on Apple's GPU
    segments = [
        {"seek": 0, "start": s.start - window_start, "end": s.end - window_start, "tokens": list(tokens)}
        for s, tokens in pieces
    ]
    add_word_timestamps(
        segments=segments, model=Encoded(model), tokenizer=tokenizer, mel=features,
        num_frames=audio_frames, last_speech_timestamp=0.0,
    )
    out = []
    floor = seg_floor = window_start
    for (seg, _), timed in zip(pieces, segments):
        words = []
        for w in timed.get("words", []):
            start = min(max(window_start + float(w["start"]), floor), window_end)
            end = min(max(window_start + float(w["end"]), start), window_end)
            words.append(Word(str(w["word"]), round(start, 3), round(end, 3), round(float(w["probability"]), 4)))
            floor = start
        if words:
            start = min(max(window_start + float(timed["start"]), seg_floor), window_end)
            end = min(max(window_start + float(timed["end"]), start), window_end)
            seg = dataclasses.replace(seg, start=round(start, 3), end=round(end, 3), words=tuple(words))
        seg_floor = seg.start
        out.append(seg)
    return out
