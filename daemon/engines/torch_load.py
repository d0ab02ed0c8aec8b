"""The openai-whisper engine's first stage: a checkpoint becomes a model on its device, in its
precision, with the settings of the CPU steps decided once (``CpuOptions``).

Nothing is stored on the torch model for later code to find: what the CPU token step and the
matrix products need is in the ``CpuOptions`` that ``load`` returns, and the engine hands it to
the parts that compute.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.engines.hardware import cpu_has_amx, cpu_has_bf16, pick_device, pick_precision

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class CpuOptions:
    """How the model computes on a CPU, decided at load.

    ``gemm``: the matrix products of the model's linear layers (``gemm.TORCH`` or
    ``gemm.ONEDNN``; ``gemm.use`` installs it in the layers, and code that multiplies by the
    model's weights directly takes ``gemm.linear(gemm)``). ``vocabulary``: a bfloat16 copy of
    the token embeddings that the CPU token step multiplies by for the vocabulary projection
    (precision bf16), or None for the fp32 weights. ``bf16_attention``: the CPU token step's
    cross-attention keys and values in bfloat16 (bf16 where the CPU has AMX)."""

    gemm: str
    vocabulary: Any = None
    bf16_attention: bool = False


@dataclass(frozen=True, eq=False)
class Loaded:
    model: Any
    device: str  # "cpu", "cuda", "mps": where it runs (after any move that failed)
    precision: str  # "fp32", "fp16", "bf16", "int8": what it runs in
    cpu: CpuOptions


def load(checkpoint: Path | str, *, device: str, precision: str, batch_size: int, cache_dir: Path | None) -> Loaded:
    """``checkpoint`` loaded for ``device`` and ``precision`` (each ``auto`` or a name), falling
    back to what this machine can run (fp32, the CPU) with a warning."""
    from daemon.engines.models import load_checkpoint

    device = pick_device(device)
    model = load_checkpoint(checkpoint, cache_dir=cache_dir)
    precision = pick_precision(device, precision)
    vocabulary = None
    if precision == "bf16":
        if device == "cpu" and cpu_has_bf16():
            model, vocabulary = to_bf16(model)
        else:
            log.warning("bf16 needs a CPU with AVX-512 BF16 or AMX; using fp32", extra={"action": "model_load"})
            precision = "fp32"
    if precision == "int8":
        try:
            model = quantize_int8(model)
        except (AttributeError, ImportError, RuntimeError) as exc:
            log.warning("int8 is not available here (%s); using fp32", exc, extra={"action": "model_load"})
            precision = "fp32"
    if device == "mps":
        device, model = to_mps(model)
        if device == "cpu":
            precision = "fp32"
    elif device == "cuda":
        model = model.to("cuda")
    from daemon.engines import gemm

    choice = gemm.TORCH
    if device == "cpu":
        choice = gemm.choose(model, batch_size, cache_dir)
        model = gemm.use(model, choice)
        log.info("matrix products on the CPU by %s", choice, extra={"action": "model_load"})
    # bf16: the CPU token step reads the vocabulary in bfloat16, and where AMX multiplies them
    # the cross-attention keys and values too; with AVX-512 BF16 alone those are slower in
    # bfloat16 than in fp32 (see shrinking)
    cpu = CpuOptions(choice, vocabulary, bf16_attention=vocabulary is not None and cpu_has_amx())
    return Loaded(model.eval(), device, precision, cpu)


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 for every linear layer. whisper's ``Linear`` subclasses torch's, which
    ``quantize_dynamic`` skips (it matches exact types), so swap in plain ``nn.Linear`` first."""
    import torch
    from whisper.model import Linear as WhisperLinear

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, WhisperLinear):
                plain = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                plain.load_state_dict(child.state_dict())
                setattr(module, name, plain)
    with warnings.catch_warnings():
        # torch marks its eager-mode quantization API as deprecated; it is the one that runs without extra packages
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantiz.*deprecated", category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def to_bf16(model: Any) -> tuple[Any, Any]:
    """The encoder's weights in bfloat16, its layer norms left in fp32 (whisper's LayerNorm
    computes in fp32 and a bf16 weight there fails with "mixed dtype"), and a bf16 copy of the
    token embeddings for the vocabulary projection (``CpuOptions.vocabulary``). The decoder's
    layers stay fp32: in bf16 their greedy choices drift (a higher WER), while the encoder's
    output gives the same words."""
    import torch

    for module in model.encoder.modules():
        if isinstance(module, torch.nn.LayerNorm):
            continue
        for param in module.parameters(recurse=False):
            param.data = param.data.to(torch.bfloat16)
    return model, bf16_vocabulary(model)


def bf16_vocabulary(model: Any) -> Any:
    """A bfloat16 copy of ``model``'s token embeddings (the fp32 ones stay for the embedding lookup)."""
    import torch

    return model.decoder.token_embedding.weight.detach().to(torch.bfloat16)


def to_mps(model: Any) -> tuple[str, Any]:
    """``model`` on Apple's GPU, or on the CPU where it cannot move there."""
    # the sparse alignment-heads mask cannot move to MPS: make it dense first
    heads = model.alignment_heads
    if heads.is_sparse:
        model.register_buffer("alignment_heads", heads.to_dense(), persistent=False)
    try:
        return "mps", model.to("mps")
    except (RuntimeError, NotImplementedError) as exc:
        log.warning("could not move the model to the GPU (%s); using the CPU", exc, extra={"action": "model_load"})
        return "cpu", model.to("cpu")


def to_cpu(model: Any) -> Any:
    """``model`` moved back from a GPU, its alignment-heads mask sparse again, as whisper keeps it."""
    heads = model.alignment_heads
    model = model.to("cpu")
    model.register_buffer("alignment_heads", heads.to("cpu").to_sparse(), persistent=False)
    return model
