"""Chunk luck averaged out: the same clips in several orders, whisperd's chunking against stock.

    python -m bench.orders                          # 6 recordings, base, chunks of 24 s, and stock
    python -m bench.orders --chunks 20,24,28        # several chunk lengths
    python -m bench.orders --model tiny.en --no-stock

Which clips share a chunk decides a few words of each recording (a phrase read right with one
neighbour and wrong with another), for whisperd's cuts and for stock transcribe()'s 30 s
windows alike. One recording measures one arrangement; this builds ``--recordings`` of about
5.5 minutes each, the 15 clips over and over, every pass in a fresh seeded order, and scores
them as one corpus. whisperd's engine runs in-process on its own chunks (batches of 16, the
folder's language fixed), without the daemon around it; stock runs transcribe() per recording.
Times are wall time of the whole loop, on whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import score
from bench import workloads as wl
from tests import speech

WORK = Path(__file__).resolve().parent / "work"


def recordings(folder: Path, count: int, minutes: float = 5.5) -> dict[Path, str]:
    """``count`` recordings (seeds 0 .. count-1) and their references."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[Path, str] = {}
    silence = np.zeros(int(wl.GAP_SECONDS * speech.SR), np.float32)
    for seed in range(count):
        rng = random.Random(seed)
        parts: list[np.ndarray] = []
        texts: list[str] = []
        order: list[str] = []
        length = 0
        while length < minutes * 60 * speech.SR:
            if not order:
                order = list(speech.clips())
                rng.shuffle(order)
            clip = order.pop()
            audio = wl._clip(clip)
            parts += [audio, silence]
            texts.append(speech.manifest()[clip])
            length += len(audio) + len(silence)
        path = folder / f"order{seed}.wav"
        if not path.exists():
            speech.write(path, np.concatenate(parts))
        out[path] = " ".join(texts)
    return out


def whisperd(files: list[Path], model: str, chunk_seconds: float, precision: str) -> dict[str, str]:
    from daemon import audio
    from daemon.config import ModelConfig
    from daemon.engines.loader import load_engine

    engine = load_engine(ModelConfig(name=model, precision=precision), WORK / "models")
    hyps: dict[str, str] = {}
    for path in files:
        chunks = list(audio.iter_chunks(path, max_chunk_s=chunk_seconds))
        texts: dict[int, str] = {}
        for i in range(0, len(chunks), 16):
            for r in engine.transcribe(chunks[i : i + 16], language="en", task="transcribe"):
                texts[r.index] = " ".join(s.text.strip() for s in r.segments)
        hyps[path.name] = " ".join(texts[k] for k in sorted(texts))
    return hyps


def stock(files: list[Path], model: str) -> dict[str, str]:
    import whisper

    from bench.engines import decode
    from daemon.engines.models import resolve_checkpoint

    m = whisper.load_model(str(resolve_checkpoint(model, WORK / "models")), device="cpu")
    return {p.name: m.transcribe(decode(p), language="en", fp16=False)["text"] for p in files}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.orders", description=__doc__.split("\n\n")[0])
    ap.add_argument("--recordings", type=int, default=6)
    ap.add_argument("--model", default="base")
    ap.add_argument("--chunks", default="24", help="whisperd's chunk lengths to try, in seconds, comma-separated")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--no-stock", action="store_true")
    ap.add_argument("--out", type=Path, help="write the transcripts and scores here as JSON")
    args = ap.parse_args(argv)
    refs_by_path = recordings(WORK / "audio" / "orders", args.recordings)
    files = list(refs_by_path)
    refs = {p.name: t for p, t in refs_by_path.items()}
    runs: list[tuple[str, Any]] = [(f"whisperd {args.model} {c} s chunks", lambda c=float(c): whisperd(files, args.model, c, args.precision))
                                   for c in args.chunks.split(",")]
    if not args.no_stock:
        runs.append((f"stock {args.model} transcribe()", lambda: stock(files, args.model)))
    report = []
    for label, run in runs:
        began = time.monotonic()
        hyps = run()
        seconds = time.monotonic() - began
        each = {n: round(100 * score.corpus_wer({n: refs[n]}, {n: hyps[n]})["wer"], 2) for n in sorted(refs)}
        wer = round(100 * score.corpus_wer(refs, hyps)["wer"], 2)
        print(f"{label}: WER {wer}% ({', '.join(f'{v}' for v in each.values())}), {seconds:.1f} s", flush=True)
        report.append({"run": label, "wer": wer, "wer_each": each, "seconds": round(seconds, 1), "transcripts": hyps})
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
