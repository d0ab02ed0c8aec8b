"""`whisperd transcribe`: files done once, in the foreground, without the queue."""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path
from typing import Sequence

from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from daemon import audio, files, outputs
from daemon.config import Config, ModelConfig, model_cache_dir
from daemon.errors import WhisperdError
from daemon.language import Setting, decide


def transcribe_files(
    paths: Sequence[Path],
    output_dir: Path,
    *,
    config: Config | None,
    model_name: str | None,
    language: str,
    formats: Sequence[str],
) -> int:
    from daemon.engines.loader import load_engine

    model_cfg = config.model if config else ModelConfig()
    if model_name:
        model_cfg = dataclasses.replace(model_cfg, name=model_name)
    cache = model_cache_dir(model_cfg, config.state_dir if config else None)
    output_dir.mkdir(parents=True, exist_ok=True)
    engine = load_engine(model_cfg, cache)
    vad = audio.Vad()
    codes = tuple(c.strip().lower() for c in language.split(",") if c.strip()) or ("auto",)
    setting = Setting.of(codes[0] if len(codes) == 1 else codes)
    failures = 0
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeRemainingColumn()) as progress:
        for path in paths:
            task = progress.add_task(path.name, total=None)
            started = time.monotonic()
            try:
                info = audio.probe(path)
                progress.update(task, total=info.duration or None)
                segments = []
                chunks = audio.iter_chunks(path, key=path.name, vad=vad)
                # the language, decided once from the first speech (as the daemon does)
                first = next(chunks, None)
                decision = None
                if first is not None:
                    decision = decide(
                        engine.detect_language(first.audio) if setting.fixed is None else {}, setting,
                        len(first.audio) / audio.SAMPLE_RATE,
                    )
                    chunks = itertools.chain([first], chunks)
                lang = decision.language if decision is not None else setting.fixed
                while True:
                    batch = [c for _, c in zip(range(model_cfg.batch_size), chunks)]
                    if not batch:
                        break
                    for r in engine.transcribe(batch, language=lang, task="transcribe"):
                        segments.extend(s for s in r.segments if s.text.strip())
                    progress.update(task, completed=batch[-1].end)
                transcript = outputs.Transcript(
                    source=path.name, segments=tuple(segments), language=lang, duration=info.duration,
                    language_detection=None if decision is None else decision.to_dict(),
                    model=engine.info.model, engine=engine.info.name, device=engine.info.device,
                    precision=engine.info.precision, processing_seconds=time.monotonic() - started,
                )
                written = outputs.write(transcript, outputs.choose_paths(output_dir, files.split_name(path.name)[0], formats))
                progress.update(task, completed=info.duration or 1, total=info.duration or 1)
                progress.console.print(f"{path.name} → {', '.join(p.name for p in written)}")
            except WhisperdError as exc:
                failures += 1
                progress.console.print(f"{path.name}: {exc}")
    engine.close()
    return 1 if failures else 0
