"""Real speech for tests: LibriSpeech clips (CC BY 4.0, see tests/data/librispeech/README.md)."""

from __future__ import annotations

import csv
import fractions
from functools import lru_cache
from pathlib import Path

import av
import numpy as np

DATA = Path(__file__).parent / "data" / "librispeech"
SR = 16000


@lru_cache(maxsize=1)
def manifest() -> dict[str, str]:
    """File name → reference transcript."""
    with open(DATA / "manifest.tsv", newline="", encoding="utf-8") as f:
        return {row["file"]: row["reference_transcript"] for row in csv.DictReader(f, delimiter="\t")}


def clips() -> list[str]:
    return sorted(manifest())


def read(name: str) -> np.ndarray:
    """A clip as float32 mono 16 kHz."""
    out = []
    with av.open(str(DATA / name)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SR)
        for frame in container.decode(audio=0):
            for f in resampler.resample(frame):
                out.append(f.to_ndarray().reshape(-1))
        for f in resampler.resample(None):
            out.append(f.to_ndarray().reshape(-1))
    return np.concatenate(out).astype(np.float32)


def concat(names: list[str], gap: float = 1.0) -> tuple[np.ndarray, str]:
    """Clips joined by ``gap`` seconds of silence, and the joined reference."""
    silence = np.zeros(int(gap * SR), dtype=np.float32)
    parts: list[np.ndarray] = []
    for n in names:
        parts += [read(n), silence]
    return np.concatenate(parts), " ".join(manifest()[n] for n in names)


def write(path: Path, samples: np.ndarray, codec: str | None = None) -> Path:
    """Encode mono 16 kHz float samples into ``path``; the container follows the suffix."""
    suffix = path.suffix.lower()
    codec = codec or {".wav": "pcm_s16le", ".m4a": "aac", ".mp3": "libmp3lame", ".flac": "flac", ".ogg": "libopus", ".opus": "libopus", ".mp4": "aac", ".mkv": "aac"}[suffix]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=SR if codec not in ("libopus",) else 48000)
        stream.layout = "mono"
        rate = stream.rate
        data = samples
        if rate != SR:
            idx = np.arange(0, len(samples), SR / rate)
            data = np.interp(idx, np.arange(len(samples)), samples).astype(np.float32)
        fmt = stream.codec_context.codec.audio_formats[0].name if stream.codec_context.codec.audio_formats else "s16"
        resampler = av.AudioResampler(format=fmt, layout="mono", rate=rate)
        step = 4096
        for start in range(0, len(data), step):
            block = data[start : start + step]
            frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = fractions.Fraction(1, rate)
            for f in resampler.resample(frame):
                for packet in stream.encode(f):
                    container.mux(packet)
        for f in resampler.resample(None):
            for packet in stream.encode(f):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def wer(reference: str, hypothesis: str) -> float:
    import jiwer
    from whisper.normalizers import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    return jiwer.wer(norm(reference), norm(hypothesis))


# Synthetic speech in other languages (espeak-ng, apt/brew), generated where a test needs it: base
# recognises its German, French, Spanish, Italian, Portuguese and Dutch (a check of detection and
# decoding, not of accuracy). No audio of this kind is committed.
GERMAN = ("Guten Morgen. Heute besprechen wir die Ergebnisse des letzten Quartals und die Pläne für das nächste Jahr. "
          "Bitte schicken Sie mir die Unterlagen bis Freitag.")
ENGLISH = "Good morning. Today we will discuss the results of the last quarter and the plans for next year."


def espeak(path: Path, text: str, voice: str) -> Path:
    """``text`` spoken by espeak-ng in ``voice`` (de, en-us, fr, ...) into the WAV file ``path``.
    Skips the test where espeak-ng is missing, except in CI (``.ci/run`` installs it), where that fails."""
    import os
    import shutil
    import subprocess

    import pytest

    exe = shutil.which("espeak-ng")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("espeak-ng is not installed (apt-get install espeak-ng)")
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng, or brew install espeak-ng)")
    subprocess.run([exe, "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    return path
