"""The engine factory: the configured engine, built and loaded.

Device, precision and CPU features are worked out in ``hardware``; this module only chooses
the engine class and hands it its settings.
"""

from __future__ import annotations

from pathlib import Path

from daemon.config import ModelConfig
from daemon.engines import hardware
from daemon.engines.base import Engine
from daemon.engines.fake import FakeEngine
from daemon.engines.faster_whisper import FasterWhisperEngine
from daemon.engines.models import resolve_checkpoint
from daemon.engines.openai_whisper import OpenAIWhisperEngine


def load_engine(cfg: ModelConfig, cache_dir: Path) -> Engine:
    """Build the configured engine, converting and keeping models in ``cache_dir`` (worked out
    by ``config.model_cache_dir``). Raises ModelError with a plain message when the model cannot load."""
    hardware.short_openmp_spin()  # before the engine's first import of torch
    cache = Path(cache_dir)
    if cfg.engine == "fake":
        return FakeEngine(cfg.name, batch_size=cfg.batch_size, crash_on=cfg.fake_crash_on,
                          seconds_per_batch=cfg.fake_seconds_per_batch)
    if cfg.engine == "faster-whisper":
        return FasterWhisperEngine(
            cfg.name, device=cfg.device, precision=cfg.precision, threads=cfg.threads, cache_dir=cache,
        )
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
