"""Matrix products on the CPU: torch's default (MKL on x86) or oneDNN, whichever is faster here.

Almost all of Whisper's work on a CPU is linear layers: the encoder's projections and MLPs,
and in the token loop the projection onto the 51,864-word vocabulary. torch sends fp32
``F.linear`` to MKL, which on CPUs other than Intel's takes a slow path (docs/decisions.md has
the measurements). oneDNN ships inside torch and computes the same fp32 products (results
differ by float rounding).

Which one is faster is measured once per machine on the model's own shapes and stored in the
model cache, so every worker, every restart and every resumed job uses the same one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from whisper.model import Linear

log = logging.getLogger(__name__)

TORCH = "torch"
ONEDNN = "onednn"
# oneDNN is chosen only when clearly faster, so that timing noise cannot flip the choice
# on a machine where both are about as fast.
MIN_GAIN = 1.2
TRIES = 3


def _onednn_op() -> Callable[..., torch.Tensor] | None:
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class OneDnnLinear(Linear):
    """whisper's ``Linear`` with fp32 CPU products done by oneDNN; anything else as before."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32 and x.device.type == "cpu":
            return onednn_linear(x, self.weight, self.bias)
        return super().forward(x)


def linear(choice: str) -> Callable[..., torch.Tensor]:
    """The product ``choice`` names, for code that multiplies by a model's weights directly
    the way ``use(model, choice)`` makes its layers multiply."""
    return onednn_linear if choice == ONEDNN else F.linear


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _shapes(model: Any, batch: int) -> list[tuple[int, int, int]]:
    """(rows, inputs, outputs): an encoder MLP layer over a window, and the vocabulary projection."""
    d = model.dims
    return [(d.n_audio_ctx, d.n_audio_state, 4 * d.n_audio_state), (batch, d.n_text_state, d.n_vocab)]


def measure(shapes: list[tuple[int, int, int]]) -> dict[str, float]:
    """Seconds per round of all ``shapes``, for each product available here (best of a few tries)."""
    products: dict[str, Callable[..., torch.Tensor]] = {TORCH: F.linear}
    if _onednn_op() is not None:
        products[ONEDNN] = onednn_linear
    gen = torch.Generator().manual_seed(0)
    operands = [(torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)) for m, k, n in shapes]
    seconds: dict[str, float] = {}
    with torch.inference_mode():
        for name, product in products.items():
            try:
                for x, w in operands:
                    product(x, w)  # warm up: first calls set up kernels
            except RuntimeError as exc:
                log.info("%s products are not usable here (%s)", name, exc, extra={"action": "model_load"})
                continue
            best = float("inf")
            for _ in range(TRIES):
                t = time.perf_counter()
                for x, w in operands:
                    product(x, w)
                best = min(best, time.perf_counter() - t)
            seconds[name] = best
    return seconds


def decide(seconds: dict[str, float]) -> str:
    if ONEDNN in seconds and seconds[ONEDNN] * MIN_GAIN < seconds[TORCH]:
        return ONEDNN
    return TORCH


def choose(
    model: Any, batch: int, cache_dir: Path | None, *, timer: Callable[[list[tuple[int, int, int]]], dict[str, float]] = measure
) -> str:
    """The faster product for ``model`` on this machine: read from ``cache_dir`` when measured
    before (same CPU, torch, threads and shapes), else measured now and stored there."""
    shapes = _shapes(model, batch)
    key = f"{_cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {shapes}"
    path = None if cache_dir is None else Path(cache_dir) / f"gemm-{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"
    stored = _stored(path, key)
    if stored:
        return stored
    # a file there that could not be read is damaged or from an older layout: it is replaced
    damaged = path is not None and path.exists()
    seconds = timer(shapes)
    choice = decide(seconds)
    log.info(
        "matrix products: %s (%s)",
        choice,
        ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in seconds.items()),
        extra={"action": "model_load"},
    )
    if path is None:
        return choice
    return _store(path, {"key": key, "choice": choice, "seconds": seconds}, replace=damaged)


def _stored(path: Path | None, key: str) -> str | None:
    if path is None:
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(stored, dict) and stored.get("key") == key and stored.get("choice") in (TORCH, ONEDNN):
        return str(stored["choice"])
    return None


def _store(path: Path, record: dict[str, Any], *, replace: bool) -> str:
    """Store the choice and return the one on disk: a worker that measured at the same
    time and stored first wins, so that all of them use the same."""
    from daemon.files import write_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path.parent, path.name, json.dumps(record, indent=1).encode(), replace=replace)
    except FileExistsError:
        return _stored(path, record["key"]) or record["choice"]
    except OSError as exc:
        log.warning("could not store the matrix product choice in %s (%s)", path, exc, extra={"action": "model_load"})
    return record["choice"]


def use(model: Any, choice: str) -> Any:
    """Make ``model``'s linear layers use ``choice``: each of whisper's ``Linear`` layers takes
    the class that computes its products that way (the layers and their weights stay where
    they are). The model does not record it: the engine's ``CpuOptions.gemm`` does."""
    kind = OneDnnLinear if choice == ONEDNN else Linear
    for module in model.modules():
        if type(module) in (Linear, OneDnnLinear):
            module.__class__ = kind
    return model
