"""openai-whisper, imported and built without the work whisperd does not need.

A worker's model load is on the way of its first transcripts, so two pieces of it are
left out (docs/decisions.md, "A lean model load"):

- ``whisper/__init__`` imports ``whisper.transcribe``, which imports ``whisper.timing``,
  which imports numba to compile its word-timing kernels. whisperd asks
  whisper for no word timings, so ``whisper.timing`` stands in until something does:
  its ``add_word_timestamps``, or any other name asked of it, imports the real module
  then and hands over.
- ``Whisper(dims)`` fills every weight with random numbers that the checkpoint
  then replaces. ``Whisper`` is built with torch's weight initializers switched off.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
import weakref
from contextlib import contextmanager
from typing import Any, Iterator

TIMING = "whisper.timing"

_lock = threading.Lock()  # installing or replacing the stand-in
_init_lock = threading.Lock()  # switching torch's initializers off and on


def lazy_timing() -> None:
    """Put the stand-in for ``whisper.timing`` in place, if whisper has not been imported yet.
    ``daemon.engines`` calls it when it is imported, so every import of whisper from whisperd's
    code (all of it in this package, or after importing it) finds the stand-in."""
    with _lock:
        if "whisper" not in sys.modules and TIMING not in sys.modules:
            sys.modules[TIMING] = _Timing(TIMING)


def import_whisper() -> Any:
    """``import whisper``, with ``whisper.timing`` standing in for the real module."""
    lazy_timing()
    import whisper

    return whisper


def real_timing() -> types.ModuleType:
    """The real ``whisper.timing``, imported now if only the stand-in is there."""
    with _lock:
        if isinstance(sys.modules.get(TIMING), _Timing):
            del sys.modules[TIMING]
        module = importlib.import_module(TIMING)
        whisper = sys.modules.get("whisper")
        if whisper is not None:
            whisper.timing = module  # type: ignore[attr-defined]
        return module


def for_alignment(model: Any, features: Any) -> tuple[Any, Any]:
    """The model and audio features that whisper's word alignment may run on: on the CPU when the
    model is on Apple's GPU, since the alignment takes float64, which MPS lacks (openai/whisper PRs
    #2704 and #2825 are still open), and reads the alignment heads as a sparse mask, which MPS
    cannot hold. The CPU copy of the model is made once per model."""
    if getattr(model.device, "type", "cpu") == "mps":
        return cpu_copy(model), features.to("cpu").float()
    return model, features


_cpu_copies: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def cpu_copy(model: Any) -> Any:
    """An fp32 copy of a Whisper model on the CPU, with its alignment heads as whisper keeps them
    (a sparse mask); made once per model, and let go with it."""
    copy = _cpu_copies.get(model)
    if copy is None:
        from whisper.model import Whisper

        with no_weight_init():
            copy = Whisper(model.dims)
        copy.load_state_dict({k: v.to("cpu").float() for k, v in model.state_dict().items()})
        copy.register_buffer("alignment_heads", model.alignment_heads.to("cpu").to_dense().to_sparse(), persistent=False)
        _cpu_copies[model] = copy = copy.float().eval()
    return copy


def _add_word_timestamps(*args: Any, **kwargs: Any) -> Any:
    return real_timing().add_word_timestamps(*args, **kwargs)


class _Timing(types.ModuleType):
    """``whisper.timing`` until it is used. ``whisper.transcribe`` imports
    ``add_word_timestamps`` from it by name, so that one is an attribute of its own."""

    def __init__(self, name: str) -> None:
        super().__init__(name, "whisper.timing, imported when first used (see daemon.engines.whisper_lib)")
        self.add_word_timestamps = _add_word_timestamps

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(real_timing(), name)


@contextmanager
def no_weight_init() -> Iterator[None]:
    """torch's weight initializers as no-ops, for building a model whose weights are then
    loaded: linear, convolution and embedding layers call them as they are made. Only the
    thread that loads a model builds torch modules in a worker; the lock keeps two loads
    (a test's, say) from undoing each other's switch."""
    import torch

    init = torch.nn.init
    names = ("kaiming_uniform_", "uniform_", "normal_")
    with _init_lock:
        saved = {n: getattr(init, n) for n in names}
        for n in names:
            setattr(init, n, _keep)
        try:
            yield
        finally:
            for n, f in saved.items():
                setattr(init, n, f)


def _keep(tensor: Any, *args: Any, **kwargs: Any) -> Any:
    return tensor
