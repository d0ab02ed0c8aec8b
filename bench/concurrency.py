"""One worker batching across files against two worker processes, on the same backlog.

    .venv/bin/python -m bench.concurrency [--copies 2]

Drains a backlog of short memos (every LibriSpeech clip, ``--copies`` times) with
``schedule.max_concurrency`` 1 and 2 and prints the wall time and audio seconds
per second of each. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests import speech
from tests.conftest import WHISPERD, make_tree


def drain(root: Path, cache: Path, copies: int, workers: int) -> tuple[float, float]:
    tree = make_tree(root, cache, f"schedule:\n  max_concurrency: {workers}\nmemory:\n  floor_gb: 0.5\n")
    tree.config.write_text(tree.config.read_text().replace("    failed: failed\n", "    failed: failed\n    duplicates: transcribe\n"))
    audio = 0.0
    for i in range(copies):
        for name in speech.clips():
            shutil.copy(speech.DATA / name, tree.inbox / f"{i}-{name}")
            audio += len(speech.read(name)) / speech.SR
    started = time.monotonic()
    subprocess.run([WHISPERD, "run", "--drain", "--config", str(tree.config)], env=tree.env, check=True, capture_output=True)
    return time.monotonic() - started, audio


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=2)
    args = parser.parse_args()
    from daemon.engines.models import resolve_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "models"
        resolve_checkpoint("tiny.en", cache)
        for workers in (1, 2):
            wall, audio = drain(Path(tmp) / f"w{workers}", cache, args.copies, workers)
            print(f"max_concurrency {workers}: {wall:.1f} s for {audio:.0f} s of audio ({audio / wall:.1f} audio s/s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
