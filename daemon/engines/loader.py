"""Choosing the engine, device and precision from the configuration."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Callable

from daemon.config import ModelConfig
from daemon.engines.base import Engine

log = logging.getLogger(__name__)


def _passive_openmp() -> bool:
    """Ask OpenMP to put idle worker threads to sleep instead of spinning.

    A spinning pool holds on to cores while it waits, so when anything else runs
    (another app, a second worker) each tiny operation of the token loop waits
    for a descheduled thread, and decoding slows down tenfold. OpenMP reads this
    setting once, when torch loads, so it is set only if torch is not loaded yet
    (and never over the user's own choice). Returns whether it is in force.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


PASSIVE_THREADS = _passive_openmp()

GPU_DEVICES = ("cuda", "mps")


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(
    requested: str,
    *,
    cuda: Callable[[], bool] = _cuda_available,
    mps: Callable[[], bool] = _mps_available,
) -> str:
    """``auto`` picks cuda, then mps, then cpu; a requested GPU that is not there falls back to cpu."""
    requested = (requested or "auto").lower()
    if requested == "cpu":
        return "cpu"
    if requested in ("auto", "cuda") and cuda():
        return "cuda"
    if requested in ("auto", "mps") and mps():
        return "mps"
    if requested != "auto":
        log.warning("device %s is not available here; using the CPU", requested, extra={"action": "model_load"})
    return "cpu"


def pick_precision(device: str, requested: str) -> str:
    """``auto`` is fp16 on a GPU and fp32 on the CPU. The CPU never runs fp16 (PyTorch
    has no fast fp16 CPU kernels and mixed dtypes fail), and int8 is a CPU-only mode."""
    requested = (requested or "auto").lower()
    if requested == "auto":
        return "fp16" if device in GPU_DEVICES else "fp32"
    if device == "cpu" and requested == "fp16":
        return "fp32"
    if device in GPU_DEVICES and requested == "int8":
        return "fp16"
    return requested


def load_engine(cfg: ModelConfig, cache_dir: Path) -> Engine:
    """Build the configured engine. Raises ModelError with a plain message when the model cannot load."""
    cache = Path(cfg.cache_dir or cache_dir)
    if cfg.engine == "faster-whisper":
        from daemon.engines.faster_whisper import FasterWhisperEngine

        return FasterWhisperEngine(
            cfg.name, device=cfg.device, precision=cfg.precision, threads=cfg.threads, batch_size=cfg.batch_size
        )
    from daemon.engines.models import resolve_checkpoint
    from daemon.engines.openai_whisper import OpenAIWhisperEngine

    return OpenAIWhisperEngine(
        resolve_checkpoint(cfg.name, cache),
        device=cfg.device,
        precision=cfg.precision,
        threads=cfg.threads,
        batch_size=cfg.batch_size,
        name=cfg.name,
        cache_dir=cache,
    )
