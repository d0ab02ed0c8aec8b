"""faster-whisper (CTranslate2) backend, an optional extra: ``pip install whisperd[fast]``."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from daemon.audio import Chunk
from daemon.engines.base import ChunkResult, EngineInfo
from daemon.engines import models
from daemon.engines.hardware import pick_device
from daemon.errors import ModelError
from daemon.jobs import Segment, Word

log = logging.getLogger(__name__)

# (device, our precision) -> CTranslate2 compute type
_COMPUTE = {
    ("cpu", "int8"): "int8",
    ("cpu", "fp32"): "float32",
    ("cuda", "int8"): "int8_float16",
    ("cuda", "fp16"): "float16",
    ("cuda", "fp32"): "float32",
}


def _source(name: str, cache_dir: Path | None) -> str:
    """A CTranslate2 model folder for ``name``: a folder path, a bundled model (tiny.en, base),
    or a name that faster-whisper finds in its own (Hugging Face) cache."""
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        return str(path)
    if name in models.BUNDLES:
        bundled = models.ct2_dir(name, cache_dir) if cache_dir is not None else models.bundled_ct2_dir(name)
        if bundled is not None:
            return str(bundled)
    return name


class FasterWhisperEngine:
    """Engine over faster-whisper; each chunk is one ``WhisperModel.transcribe`` call."""

    def __init__(
        self,
        name: str,
        *,
        device: str = "auto",
        precision: str = "auto",
        threads: int = 0,
        cache_dir: Path | None = None,
    ) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise ModelError(
                "the faster-whisper engine is not installed: install whisperd[fast], or set model.engine to openai-whisper"
            ) from exc
        device = pick_device(device, mps=lambda: False)  # CTranslate2 has no Metal backend
        precision = (precision or "auto").lower()
        if device == "cpu":  # CTranslate2's int8 is its fast CPU mode; fp16 does not exist there
            precision = "fp32" if precision in ("fp32", "fp16", "bf16") else "int8"
        elif precision == "auto":
            precision = "fp16"
        compute_type = _COMPUTE.get((device, precision), "default")
        source = _source(name, cache_dir)
        try:
            self.model = WhisperModel(
                source, device=device, compute_type=compute_type, cpu_threads=max(0, threads), local_files_only=True
            )
        except Exception as exc:  # missing files, a bad folder, an unsupported compute type
            raise ModelError(
                f"faster-whisper could not load model {name!r} from {source!r} ({exc}); "
                "point model.name at a CTranslate2 model folder, or use tiny.en or base"
            ) from exc
        self.info = EngineInfo("faster-whisper", name, device, precision)

    def transcribe(
        self, chunks: Sequence[Chunk], *, language: str | None, task: str, prompt: str | None = None, words: bool = False
    ) -> list[ChunkResult]:
        if not self.model.model.is_multilingual:
            language = "en"
        results = []
        for chunk in chunks:
            pieces, info = self.model.transcribe(
                chunk.audio,
                language=language,
                task=task,
                beam_size=1,  # greedy, as the openai-whisper engine decodes
                vad_filter=False,
                without_timestamps=False,
                condition_on_previous_text=False,
                initial_prompt=prompt,
                word_timestamps=words,
            )
            segments = []
            floor = chunk.start
            for p in pieces:
                text = p.text.strip()
                if not text:
                    continue
                start = min(max(chunk.start + p.start, floor), chunk.end)
                end = min(max(chunk.start + p.end, start), chunk.end)
                timed = tuple(
                    Word(w.word, round(float(min(max(chunk.start + w.start, start), chunk.end)), 3),
                         round(float(min(max(chunk.start + w.end, start), chunk.end)), 3), round(float(w.probability), 4))
                    for w in (p.words or ())
                )
                segments.append(Segment(round(start, 3), round(end, 3), text, timed))
                floor = start
            results.append(ChunkResult(chunk.index, chunk.start, chunk.end, tuple(segments), info.language))
        return results

    def detect_language(self, audio: Any) -> dict[str, float]:
        if not self.model.model.is_multilingual:
            return {"en": 1.0}
        _, _, ranked = self.model.detect_language(audio)  # its first 30 s, as whisper does
        return dict(ranked)

    def prepare(self, chunk: Chunk, language: str | None) -> None:
        pass  # CTranslate2 encodes and decodes in one call

    def share(self, seconds: float, language: str | None) -> float:
        return 1.0  # every chunk is a full window here

    def memory_bytes(self) -> int | None:
        return None  # CTranslate2 reports no figure of its own

    def close(self) -> None:
        model: Any = getattr(self, "model", None)
        if model is not None:
            del self.model
