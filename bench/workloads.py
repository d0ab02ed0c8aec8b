"""The audio the bench runs on, built from the LibriSpeech clips in tests/data/librispeech.

A: a backlog of short voice memos (every clip as its own file, the set repeated
under distinct names). B, C: one long recording, clips joined by 0.7 s of
silence, about 5 and 60 minutes, each pass through the set in its own order (a
fixed shuffle): in one fixed order the same clips met at the same cuts every
pass, so C's errors were one arrangement's, 27 times over. Built files are cached under bench/work/audio
and rebuilt only when missing; their references sit beside them in meta.json.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from tests import speech

GAP_SECONDS = 0.7
ORDER_SEED = 0  # the shuffle of each pass through the clips in B and C; changing it changes the workloads


@dataclass(frozen=True)
class Workload:
    key: str  # A, B, C
    title: str
    files: tuple[Path, ...]
    refs: dict[str, str] = field(compare=False)  # file name -> reference transcript
    audio_seconds: float = 0.0

    @property
    def label(self) -> str:
        n = len(self.files)
        what = f"{n} files" if n > 1 else "1 file"
        return f"{self.key}: {self.title} ({what}, {self.audio_seconds / 60:.1f} min)"


@lru_cache(maxsize=None)
def _clip(name: str) -> np.ndarray:
    return speech.read(name)


def _load_meta(folder: Path, files: list[str]) -> dict | None:
    meta = folder / "meta.json"
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    if sorted(data.get("refs", {})) != sorted(files) or not all((folder / f).is_file() for f in files):
        return None
    return data


def _save_meta(folder: Path, refs: dict[str, str], seconds: float) -> None:
    (folder / "meta.json").write_text(json.dumps({"refs": refs, "audio_seconds": seconds}, indent=1))


def short_files(root: Path, copies: int = 4, limit: int | None = None) -> Workload:
    """Every clip as its own file, ``copies`` times under distinct names (``limit``: only the first n files)."""
    folder = root / (f"A-{copies}x" + (f"-{limit}" if limit else ""))
    names = [f"memo{k + 1}_{clip}" for k in range(copies) for clip in speech.clips()]
    if limit:
        names = names[:limit]
    data = _load_meta(folder, names)
    if data is None:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        refs, seconds = {}, 0.0
        for name in names:
            clip = name.split("_", 1)[1]
            shutil.copy(speech.DATA / clip, folder / name)
            refs[name] = speech.manifest()[clip]
            seconds += len(_clip(clip)) / speech.SR
        _save_meta(folder, refs, seconds)
        data = {"refs": refs, "audio_seconds": seconds}
    return Workload("A", "backlog of short voice memos", tuple(folder / n for n in names), data["refs"], data["audio_seconds"])


def long_recording(root: Path, key: str, minutes: float) -> Workload:
    """Clips joined with 0.7 s gaps until about ``minutes`` long, as one .m4a: the whole set over and
    over, each pass in its own order (seeded, so B is the start of C)."""
    name = f"recording-{minutes:g}min.m4a"
    folder = root / f"{key}-{minutes:g}min-shuffled-{ORDER_SEED}"
    data = _load_meta(folder, [name])
    if data is None:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        target = minutes * 60 * speech.SR
        silence = np.zeros(int(GAP_SECONDS * speech.SR), dtype=np.float32)
        parts: list[np.ndarray] = []
        texts: list[str] = []
        length = 0
        rng = random.Random(ORDER_SEED)
        order: list[str] = []
        while length < target - len(silence):
            if not order:
                order = list(speech.clips())
                rng.shuffle(order)
            clip = order.pop(0)
            audio = _clip(clip)
            parts += [audio, silence]
            texts.append(speech.manifest()[clip])
            length += len(audio) + len(silence)
        samples = np.concatenate(parts)
        speech.write(folder / name, samples)
        refs = {name: " ".join(texts)}
        seconds = len(samples) / speech.SR
        _save_meta(folder, refs, seconds)
        data = {"refs": refs, "audio_seconds": seconds}
    title = f"one long recording (~{minutes:g} min)"
    return Workload(key, title, (folder / name,), data["refs"], data["audio_seconds"])
