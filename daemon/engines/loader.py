"""The engine factory: the configured engine, built and loaded.

Device, precision and CPU features are worked out in ``hardware``; this module only chooses
the engine class and hands it its settings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from daemon.config import ModelConfig
from daemon.engines import hardware
from daemon.engines.base import Engine
from daemon.engines.fake import FakeEngine
from daemon.engines import known_answer
from daemon.engines.faster_whisper import FasterWhisperEngine
from daemon.engines.models import resolve_checkpoint
from daemon.engines.openai_whisper import OpenAIWhisperEngine
from daemon.errors import ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineChoice:
    engine: str  # a name of config.ENGINES other than auto
    why: str  # in plain words, for doctor and the log


def pick_engine(
    requested: str,
    *,
    apple: Callable[[], bool] = hardware.apple_silicon,
    mlx: Callable[[], bool] = hardware.mlx_installed,
) -> EngineChoice:
    """``auto``: MLX on Apple silicon where it is installed (Apple's GPU through MLX is the fast
    path there), openai-whisper elsewhere. Any other name is taken as it is."""
    requested = (requested or "auto").lower()
    if requested != "auto":
        return EngineChoice(requested, f"model.engine is {requested}")
    if not apple():
        return EngineChoice("openai-whisper", "not a Mac with Apple silicon, so openai-whisper (model.engine: auto)")
    if not mlx():
        return EngineChoice(
            "openai-whisper",
            "Apple silicon, but mlx-whisper is not installed (make install, or pip install '.[mlx]'), so openai-whisper",
        )
    return EngineChoice("mlx", "Apple silicon with mlx-whisper installed, so MLX (model.engine: auto)")


def _mlx_engine() -> type:
    """The MLX engine's class: imported only when chosen, since MLX is an optional install."""
    try:
        from daemon.engines.mlx import MlxEngine
    except ImportError as exc:
        raise ModelError(
            f"model.engine mlx needs mlx-whisper, which is not installed here ({exc}); "
            "pip install '.[mlx]', or set model.engine: auto"
        ) from exc
    return MlxEngine


def load_engine(cfg: ModelConfig, cache_dir: Path) -> Engine:
    """Build the configured engine, converting and keeping models in ``cache_dir`` (worked out
    by ``config.model_cache_dir``). Raises ModelError with a plain message when the model cannot load."""
    hardware.short_openmp_spin()  # before the engine's first import of torch
    cache = Path(cache_dir)
    choice = pick_engine(cfg.engine)
    if cfg.engine == "auto":
        log.info("engine %s: %s", choice.engine, choice.why, extra={"action": "model_load"})
    if choice.engine == "fake":
        return FakeEngine(cfg.name, batch_size=cfg.batch_size, crash_on=cfg.fake_crash_on,
                          seconds_per_batch=cfg.fake_seconds_per_batch)
    if choice.engine == "faster-whisper":
        return FasterWhisperEngine(
            cfg.name, device=cfg.device, precision=cfg.precision, threads=cfg.threads, cache_dir=cache,
        )
    checkpoint = resolve_checkpoint(cfg.name, cache)
    if choice.engine == "mlx":
        mlx = _mlx_engine()

        def build(device: str) -> Engine:
            return mlx(checkpoint, device=device, precision=cfg.precision, batch_size=cfg.batch_size, name=cfg.name, cache_dir=cache)
    else:

        def build(device: str) -> Engine:
            return OpenAIWhisperEngine(
                checkpoint,
                device=device,
                precision=cfg.precision,
                threads=cfg.threads,
                batch_size=cfg.batch_size,
                name=cfg.name,
                cache_dir=cache,
                fit_windows=cfg.fit_windows,
            )

    return checked(build(cfg.device), lambda: build("cpu"))


def checked(engine: Engine, on_cpu: Callable[[], Engine], check: Callable[[Engine], str | None] = known_answer.check) -> Engine:
    """``engine``, if it runs on the CPU or gives a known clip's words back on its GPU; else the
    same model on the CPU (``on_cpu``), whose info says why (``EngineInfo.note``, shown by status)."""
    if engine.info.device == "cpu":
        return engine
    why = check(engine)
    if why is None:
        return engine
    log.warning("%s; using the CPU instead", why, extra={"action": "model_load"})
    engine.close()
    cpu = on_cpu()
    cpu.info = replace(cpu.info, note=f"{why}, so it runs on the CPU")
    return cpu
