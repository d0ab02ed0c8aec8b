"""A known answer, checked when a model is loaded on a GPU: a short bundled clip of real speech
whose words are known. A GPU backend can give silently wrong text (large-v3 on MPS has said
nothing but "!"); when the clip's words do not come back, ``loader`` runs the model on the CPU
instead, and says why. The clip is 1.65 s of LibriSpeech (see daemon/data/README.md).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from daemon.audio import SAMPLE_RATE, Chunk

CLIP = Path(__file__).resolve().parent.parent / "data" / "known_answer.flac"
TEXT = "the two stray kittens"
KEY = "known-answer"


@lru_cache(maxsize=1)
def clip() -> np.ndarray:
    """The clip as float32 mono 16 kHz."""
    import av

    out = []
    with av.open(str(CLIP)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        for frame in container.decode(audio=0):
            out += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.float32)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def word_errors(expected: list[str], said: list[str]) -> int:
    """Words substituted, left out or added (edit distance over words)."""
    row = list(range(len(said) + 1))
    for i, want in enumerate(expected, 1):
        prev, row[0] = row[0], i
        for j, got in enumerate(said, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (want != got))
    return row[-1]


def wrong(said: str) -> bool:
    """Whether ``said`` is not the clip's text: more than one word in four off."""
    expected = words(TEXT)
    return word_errors(expected, words(said)) * 4 > len(expected)


def check(engine: Any) -> str | None:
    """Transcribe the clip on ``engine``: None when its words come back, else why not, in plain words."""
    audio = clip()
    chunk = Chunk(0, 0.0, len(audio) / SAMPLE_RATE, audio, key=KEY, source=str(CLIP))
    try:
        results = engine.transcribe([chunk], language="en", task="transcribe")
    except Exception as exc:  # noqa: BLE001 - any failure of the device is the answer
        return f"the model failed on a known clip on {engine.info.device} ({type(exc).__name__}: {exc})"
    said = " ".join(s.text for r in results for s in r.segments)
    if wrong(said):
        return f'the model on {engine.info.device} heard a known clip as "{said}" instead of "{TEXT}"'
    return None
