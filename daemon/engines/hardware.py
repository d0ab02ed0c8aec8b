"""What this machine offers the engines: the device, the precision, the CPU's bfloat16 support,
and how idle OpenMP threads wait.

Nothing here runs at import. ``short_openmp_spin()`` changes the process's environment, so
each process that loads a model calls it once, before torch loads (``load_engine`` does, and
so do the entry points that may import torch earlier).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import platform
import sys
from typing import Any, Callable

log = logging.getLogger(__name__)

GPU_DEVICES = ("cuda", "mps")

# How long an idle OpenMP worker spins before it sleeps: libgomp (Linux wheels) counts spins,
# LLVM's libomp (macOS) counts milliseconds. Their defaults hold on to the cores between the
# thousands of tiny operations of the token loop; these are of the order of a millisecond on
# either (docs/decisions.md has the measurements).
SHORT_SPIN_ENV = {"GOMP_SPINCOUNT": "30000", "KMP_BLOCKTIME": "1"}


@functools.cache
def short_openmp_spin() -> bool:
    """Make idle OpenMP workers sleep soon instead of spinning; once per process.

    A spinning pool holds on to cores while it waits, so when anything else runs
    (another app, a second worker) each tiny operation waits for a descheduled
    thread and decoding slows down many times over; sleeping at once (PASSIVE)
    costs speed on an idle machine. A short spin keeps both. OpenMP reads these
    settings once, when torch loads, so they are set only if torch is not loaded
    yet, and never over the user's own choice.
    Returns whether idle workers give their cores up soon.
    """
    if not any(k in os.environ for k in ("OMP_WAIT_POLICY", *SHORT_SPIN_ENV)):
        if "torch" in sys.modules:
            return False
        os.environ.update(SHORT_SPIN_ENV)
        return True
    return os.environ.get("OMP_WAIT_POLICY", "").upper() != "ACTIVE"


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
    fp32, for every model (docs/decisions.md has the measurements). The CPU never runs fp16
    (PyTorch has no fast fp16 CPU kernels and mixed dtypes fail); int8 and bf16 are CPU-only modes."""
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


def apple_silicon() -> bool:
    """Whether this is a Mac with an Apple chip (arm64), natively: not Python under Rosetta."""
    return sys.platform == "darwin" and platform.machine() == "arm64"


def mlx_installed() -> bool:
    """Whether mlx-whisper and MLX are installed (``pip install '.[mlx]'``), without importing them."""
    return all(importlib.util.find_spec(name) is not None for name in ("mlx", "mlx_whisper"))
