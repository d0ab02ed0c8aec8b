"""The openai-whisper engine's third stage: audio features become decoded windows (tokens and
their scores), greedy first, warmer where the text looks wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.engines.torch_load import CpuOptions
from daemon.engines.transcribing import SAMPLING_SEED, with_fallback


@dataclass(frozen=True, eq=False)
class Decoder:
    """Decodes audio features with ``model`` in ``precision``; ``cpu``: how its CPU steps compute."""

    model: Any
    precision: str
    cpu: CpuOptions

    def decode(
        self, features: Any, temperature: float, language: str | None, task: str, frames: list[int] | None = None,
        prompt: str | None = None, sample_len: int | None = None,
    ) -> list[Any]:
        """One decoding pass. ``frames``: each item's own number of audio features, when the
        items are padded to the longest (fit windows). ``sample_len``: the most tokens to decode."""
        import torch
        import whisper

        frames = frames or [features.shape[1]] * features.shape[0]
        fp16 = self.precision == "fp16"
        if temperature > 0:
            options = whisper.DecodingOptions(
                task=task, language=language, temperature=temperature, best_of=5, fp16=fp16, prompt=prompt,
                sample_len=sample_len,
            )
        else:
            options = whisper.DecodingOptions(
                task=task, language=language, temperature=0.0, fp16=fp16, prompt=prompt, sample_len=sample_len,
            )
        from daemon.engines import shrinking  # torch and whisper load at first use

        if (options.best_of or options.beam_size or 1) > 1:
            # openai-whisper 20250625 no longer repeats the audio features per beam or sample,
            # which only broadcasts for one item at a time: decode these items one by one,
            # each without padding (whisper's own loop masks none)
            out = []
            with torch.random.fork_rng(devices=[]):
                for i in range(features.shape[0]):
                    torch.manual_seed(SAMPLING_SEED)  # each item's sampling depends on that item alone
                    out.append(shrinking.decode(self.model, features[i : i + 1, : frames[i]], options)[0])
            return out
        return shrinking.decode(self.model, features, options, frames, cpu=self.cpu)

    def with_fallback(
        self, features: Any, language: str | None, task: str, frames: list[int], prompt: str | None = None,
        sample_len: int | None = None,
    ) -> list[Any]:
        """Greedy first; only the items whose text looks wrong are decoded again, at rising
        temperatures, as whisper.transcribe does (``transcribing.with_fallback``). ``frames``: each
        item's own number of audio features (the rest is padding)."""

        def decode(todo: list[int], temperature: float) -> list[Any]:
            rows = features if len(todo) == features.shape[0] else features[todo]  # no copy of a whole batch
            return self.decode(rows, temperature, language, task, [frames[i] for i in todo], prompt, sample_len)

        return with_fallback(features.shape[0], decode)
