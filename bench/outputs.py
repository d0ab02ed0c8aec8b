"""What the per-folder output keys cost, on the dev clips (tests/data/librispeech, or --dev).

    python -m bench.outputs words  [--model tiny.en|base] [--rounds 3] [--files 6]
        `whisperd run --drain` on the clips with words: false and words: true, in alternating
        rounds (after one warm-up run): whole-process seconds and the files' processing_seconds.
    python -m bench.outputs prompt [--model tiny.en|base]
        The engine on every clip, batched, without a prompt and with one whose words are not
        spoken ("Anna Kowalczyk, Kubernetes, OKR"): WER against the references, and whether a
        prompt word shows up.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

DEV = Path(__file__).resolve().parents[1] / "tests" / "data" / "librispeech"
PROMPT = "Anna Kowalczyk, Kubernetes, OKR"


def references(dev: Path) -> dict[str, str]:
    with open(dev / "manifest.tsv", newline="", encoding="utf-8") as f:
        return {row["file"]: row["reference_transcript"] for row in csv.DictReader(f, delimiter="\t")}


def drain(root: Path, clips: list[Path], model: str, cache: Path, words: bool) -> tuple[float, float]:
    """One `whisperd run --drain` over ``clips``: (whole-process seconds, sum of processing_seconds)."""
    shutil.rmtree(root, ignore_errors=True)
    for d in ("inbox", "outbox", "archive", "failed"):
        (root / d).mkdir(parents=True)
    for c in clips:
        shutil.copy(c, root / "inbox" / c.name)
    cfg = root / "config.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        database: sqlite:///state/queue.db
        model: {{name: {model}, cache_dir: {cache}, batch_size: 8}}
        folders:
          - {{inbox: inbox, output: outbox, archive: archive, failed: failed, language: en, words: {str(words).lower()}}}
        watch: {{settle_seconds: 0.1, poll_seconds: 0.1}}
        thermal: {{source: none}}
        power: {{prevent_sleep: false}}
        notify: false
    """))
    os.chmod(cfg, 0o644)
    env = dict(os.environ, HOME=str(root), XDG_CACHE_HOME=str(root / ".cache"), XDG_STATE_HOME=str(root / ".state"))
    whisperd = str(Path(sys.executable).parent / "whisperd")
    began = time.perf_counter()
    out = subprocess.run([whisperd, "run", "--drain", "--config", str(cfg)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    docs = [json.loads(p.read_text()) for p in (root / "outbox").glob("*.json")]
    assert len(docs) == len(clips) and all(("words" in s) == words for d in docs for s in d["segments"])
    return wall, sum(d["processing_seconds"] for d in docs)


def words_cost(args: argparse.Namespace) -> None:
    clips = sorted(p for p in args.dev.iterdir() if p.suffix in (".flac", ".wav"))[: args.files]
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "models"
        drain(Path(tmp) / "warm", clips, args.model, cache, False)  # converts the model, fills the page cache
        runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for i in range(args.rounds):
            for words in (False, True) if i % 2 == 0 else (True, False):
                runs[words].append(drain(Path(tmp) / f"r{i}{int(words)}", clips, args.model, cache, words))
                print(f"words: {str(words).lower():5} {runs[words][-1][0]:6.1f} s, processing_seconds {runs[words][-1][1]:6.1f}", flush=True)
    median = {w: statistics.median(r[0] for r in runs[w]) for w in runs}
    print(f"{args.model}, {len(clips)} clips: words: false {median[False]:.1f} s, words: true {median[True]:.1f} s "
          f"({median[True] / median[False]:.2f}x), medians of {args.rounds} whole processes")


def prompt_wer(args: argparse.Namespace) -> None:
    from daemon.audio import Vad, iter_chunks
    from daemon.engines.models import resolve_checkpoint
    from daemon.engines.openai_whisper import OpenAIWhisperEngine
    from tests import speech

    refs = references(args.dev)
    with tempfile.TemporaryDirectory() as tmp:
        engine = OpenAIWhisperEngine(resolve_checkpoint(args.model, Path(tmp)), device="cpu", batch_size=8,
                                     name=args.model, fit_windows=True)
        vad = Vad()
        chunks = [c for name in sorted(refs) for c in iter_chunks(args.dev / name, vad=vad, key=name)]
        for prompt in (None, PROMPT):
            results = engine.transcribe(chunks, language="en", task="transcribe", prompt=prompt)
            said: dict[str, list[str]] = {}
            for chunk, r in zip(chunks, results):
                said.setdefault(chunk.key, []).extend(s.text for s in r.segments)
            hyp = " ".join(" ".join(said.get(k, [])) for k in sorted(refs))
            leaked = {w for w in ("Anna", "Kowalczyk", "Kubernetes", "OKR") if w in hyp}
            print(f"{args.model}, prompt {prompt!r}: WER {speech.wer(' '.join(refs[k] for k in sorted(refs)), hyp):.2%}, "
                  f"prompt words in the text: {sorted(leaked) or 'none'}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.outputs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("words", "prompt"))
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--dev", type=Path, default=DEV)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--files", type=int, default=6)
    args = p.parse_args(argv)
    (words_cost if args.what == "words" else prompt_wer)(args)


if __name__ == "__main__":
    main()
