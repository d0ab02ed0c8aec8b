"""Choosing the engine, device and precision from the configuration."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from daemon.config import ModelConfig
from daemon.engines.base import Engine

log = logging.getLogger(__name__)

GPU_DEVICES = ("cuda", "mps")

# How long an idle OpenMP worker spins before it sleeps: libgomp (Linux wheels) counts spins,
# LLVM's libomp (macOS) counts milliseconds. Their defaults (300,000 spins; 200 ms) hold on to
# the cores between the thousands of tiny operations of the token loop. 30,000 spins is of the order of
# a millisecond, as on macOS. Measured on a 2-core Intel Xeon, 5% faster than 3,000 on short
# memos and on a 5-minute file with a quiet machine, 4% slower with a busy loop on one core
# (the model then uses one thread; see threads.py).
_SHORT_SPIN = {"GOMP_SPINCOUNT": "30000", "KMP_BLOCKTIME": "1"}


def _short_openmp_spin() -> bool:
    """Make idle OpenMP workers sleep soon instead of spinning.

    A spinning pool holds on to cores while it waits, so when anything else runs
    (another app, a second worker) each tiny operation waits for a descheduled
    thread and decoding slows down up to tenfold; sleeping at once (PASSIVE)
    avoids that but costs a fifth of the speed on an idle machine. A short spin
    keeps both. OpenMP reads these settings once, when torch loads, so they are
    set only if torch is not loaded yet, and never over the user's own choice.
    Returns whether idle workers give their cores up soon.
    """
    if not any(k in os.environ for k in ("OMP_WAIT_POLICY", *_SHORT_SPIN)):
        if "torch" in sys.modules:
            return False
        os.environ.update(_SHORT_SPIN)
        return True
    return os.environ.get("OMP_WAIT_POLICY", "").upper() != "ACTIVE"


SHORT_SPIN = _short_openmp_spin()


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _cpu_has(torch: Any, feature: str) -> bool:
    """torch.cpu's ``_is_<feature>_supported()``, False where this torch lacks the check."""
    if torch is None:
        import torch
    check = getattr(getattr(torch, "cpu", None), f"_is_{feature}_supported", None)
    return bool(check()) if check is not None else False


def cpu_has_bf16(torch: Any = None) -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX-512 BF16 or AMX), so
    that bf16 is faster here rather than slower."""
    return _cpu_has(torch, "amx_tile") or _cpu_has(torch, "avx512_bf16")


def cpu_has_amx(torch: Any = None) -> bool:
    """Whether this CPU has AMX tiles, whose bfloat16 products make the token step's bf16
    reads pay (see ``OpenAIWhisperEngine``); AVX-512 BF16 alone makes them slower."""
    return _cpu_has(torch, "amx_tile")


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


def pick_precision(device: str, requested: str, *, bf16: Callable[[], bool] = cpu_has_bf16) -> str:
    """``auto`` is fp16 on a GPU; on the CPU, bf16 (the encoder in bfloat16, the decoder in
    fp32) where the CPU multiplies bfloat16 natively (``bf16``: AVX-512 BF16 or AMX), else
    fp32. Measured on a 2-core AMD EPYC with AVX-512 BF16, daemon runs interleaved with fp32:
    60 memos 1.19x faster (median of 3), a 5.5-minute recording 1.11x, a 60-minute one
    1.12x; word error rate 4.93% and 5.35% either way, 4.64% against 4.62% on the hour.
    The CPU never runs fp16 (PyTorch has no fast fp16 CPU kernels and mixed dtypes fail);
    int8 and bf16 are CPU-only modes."""
    requested = (requested or "auto").lower()
    if requested == "auto":
        if device in GPU_DEVICES:
            return "fp16"
        return "bf16" if device == "cpu" and bf16() else "fp32"
    if device == "cpu" and requested == "fp16":
        return "fp32"
    if device in GPU_DEVICES and requested in ("int8", "bf16"):
        return "fp16"
    return requested


def load_engine(cfg: ModelConfig, cache_dir: Path) -> Engine:
    """Build the configured engine. Raises ModelError with a plain message when the model cannot load."""
    cache = Path(cfg.cache_dir or cache_dir)
    if cfg.engine == "fake":
        from daemon.engines.fake import FakeEngine

        return FakeEngine(cfg.name, batch_size=cfg.batch_size, crash_on=cfg.fake_crash_on)
    if cfg.engine == "faster-whisper":
        from daemon.engines.faster_whisper import FasterWhisperEngine

        return FasterWhisperEngine(
            cfg.name, device=cfg.device, precision=cfg.precision, threads=cfg.threads, batch_size=cfg.batch_size,
            cache_dir=cache,
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
        fit_windows=cfg.fit_windows,
    )
