"""One baseline engine over a list of files, in its own process: ``python -m bench.engines SPEC OUT``.

SPEC is a JSON file: ``{"engine": ..., "files": [...], ...}``; OUT receives the
transcripts and timings. Engines:

- ``openai-whisper``: stock ``model.transcribe(audio, fp16=False)`` per file, greedy
  default decoding, model loaded from the checkpoint whisperd itself resolves (with
  ``"device": "cuda"`` in the spec, on that GPU with transcribe's default ``fp16=True``);
- ``faster-whisper``: ``WhisperModel(..., device="cpu", compute_type="int8").transcribe``
  per file, with its defaults (beam 5) or ``beam_size`` from the spec;
- ``faster-whisper-batched``: its ``BatchedInferencePipeline`` with ``batch_size``;
- ``mlx-whisper``: mlx-whisper's own ``transcribe()`` per file, with its defaults (fp16 on
  Apple's GPU), on the same checkpoint converted once into an MLX folder beside it.

Audio is decoded with PyAV into float32 mono 16 kHz (no ffmpeg binary needed)
and that decoding counts as work, as it does for whisperd. ``load_s`` is the
import and model load; ``work_s`` runs from the first file's decoding to the
last transcript.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SR = 16000
languages: list[str | None] = []  # each file's language, as the engine decided it


def decode(path: str | Path) -> np.ndarray:
    """A file as float32 mono 16 kHz, decoded with PyAV."""
    import av

    out = []
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SR)
        for frame in container.decode(audio=0):
            for f in resampler.resample(frame):
                out.append(f.to_ndarray().reshape(-1))
        for f in resampler.resample(None):
            out.append(f.to_ndarray().reshape(-1))
    return np.concatenate(out).astype(np.float32)


def _openai_whisper(spec: dict[str, Any]) -> tuple[Any, Any]:
    import torch
    import whisper

    device = spec.get("device", "cpu")
    fp16 = device != "cpu"  # transcribe's default, fp16=True, where a GPU runs it
    model = whisper.load_model(spec["checkpoint"], device=device)

    language = spec.get("language")  # None: transcribe() detects it from the first 30 s

    def transcribe(audio: np.ndarray) -> str:
        result = model.transcribe(audio, fp16=fp16, language=language)
        languages.append(result.get("language"))
        return result["text"]

    return transcribe, {"torch_threads": torch.get_num_threads(), "device": device, "fp16": fp16,
                        "decoding": "greedy, temperature fallback (defaults)", "language": language or "auto"}


def _faster_whisper(spec: dict[str, Any]) -> tuple[Any, Any]:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    compute = spec.get("compute_type", "int8")
    model = WhisperModel(spec["ct2_dir"], device="cpu", compute_type=compute, local_files_only=True)
    beam = spec.get("beam_size")
    language = spec.get("language")
    if spec["engine"] == "faster-whisper-batched":
        pipeline = BatchedInferencePipeline(model=model)
        batch = int(spec.get("batch_size", 8))

        def transcribe(audio: np.ndarray) -> str:
            kwargs: dict[str, Any] = {"batch_size": batch, "language": language}
            if beam:
                kwargs["beam_size"] = beam
            segments, _ = pipeline.transcribe(audio, **kwargs)
            return "".join(s.text for s in segments)

        return transcribe, {"batch_size": batch, "beam_size": beam or "default (5)", "compute_type": compute}

    def transcribe(audio: np.ndarray) -> str:
        kwargs: dict[str, Any] = {"beam_size": beam} if beam else {}
        segments, info = model.transcribe(audio, language=language, **kwargs)
        text = "".join(s.text for s in segments)
        languages.append(info.language)
        return text

    return transcribe, {"beam_size": beam or "default (5)", "compute_type": compute, "language": language or "auto"}


def _mlx_whisper(spec: dict[str, Any]) -> tuple[Any, Any]:
    import mlx.core as mx
    import mlx_whisper

    from daemon.engines.mlx_convert import mlx_folder

    metal = bool(mx.metal.is_available())
    precision = "fp16" if metal else "fp32"  # transcribe's default is fp16; MLX's CPU backend is faster in fp32
    checkpoint = Path(spec["checkpoint"])
    folder = str(mlx_folder(checkpoint, checkpoint.parent, precision))

    def transcribe(audio: np.ndarray) -> str:
        return mlx_whisper.transcribe(audio, path_or_hf_repo=folder, fp16=metal, verbose=None)["text"]

    return transcribe, {"device": "gpu (Metal)" if metal else "cpu", "precision": precision,
                        "decoding": "greedy, temperature fallback (defaults)"}


def main(spec_path: str, out_path: str) -> int:
    t0 = time.perf_counter()
    spec = json.loads(Path(spec_path).read_text())
    engine = spec["engine"]
    if engine == "openai-whisper":
        transcribe, details = _openai_whisper(spec)
    elif engine in ("faster-whisper", "faster-whisper-batched"):
        transcribe, details = _faster_whisper(spec)
    elif engine == "mlx-whisper":
        transcribe, details = _mlx_whisper(spec)
    else:
        raise SystemExit(f"unknown engine {engine!r}")
    load_s = time.perf_counter() - t0
    texts: dict[str, str] = {}
    per_file: dict[str, float] = {}
    w0 = time.perf_counter()
    for f in spec["files"]:
        f0 = time.perf_counter()
        texts[Path(f).name] = transcribe(decode(f)).strip()
        per_file[Path(f).name] = round(time.perf_counter() - f0, 3)
    work_s = time.perf_counter() - w0
    Path(out_path).write_text(json.dumps({
        "engine": engine, "load_s": load_s, "work_s": work_s, "texts": texts, "per_file_s": per_file, "details": details,
        "languages": dict(zip(texts, languages)),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
