"""Packing memos into shared windows, against batching their chunks: which is faster at what WER.

    .venv/bin/python -m bench.packing [--rounds 3] [--gaps 1,2] [--out bench/results/packing.json]

There are two ways to stop a short memo from paying for a whole 30 s window. whisperd batches the
memos' chunks, each in a window fitted to its length (``model.fit_windows``). The other way packs the
speech of several memos into one window, with silence between them, transcribes the packed windows
(batched too), and gives each memo the segments whose time falls in its stretch of the window.

Both run here in one process, in rounds, on the memo backlog (workload A). They use whisperd's engine
at its defaults and the same chunks (whisperd's voice detection cuts each memo). Packs are filled in
the backlog's order, up to ``audio.CHUNK_SECONDS`` of audio, the length whisperd cuts long recordings
to. A memo that does not fit starts the next pack. A segment whose timestamps overlap two memos'
stretches by more than ``CROSS_SECONDS`` each is counted as a crossing: its words go to the memo it
overlaps most, and some of them may belong to the other. Timestamps are loose by a few tenths of a
second, so not every crossing moves words; the WER per memo (below) counts those that did.

WER is counted per memo (each memo's errors against its own reference, summed), so a word that went
to the neighbouring memo counts twice, as it should; the corpus WER that ``bench.run`` reports joins the
memos' texts, which would hide such a move between memos that are neighbours in the corpus too.

This measures the engine alone, not the daemon: no queue, no files written, the chunks cut once
before the rounds. The daemon's own runs are in ``bench.run``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import workloads as wl
from bench.score import corpus_wer
from daemon.engines import hardware

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
CROSS_SECONDS = 0.3


@dataclass(frozen=True)
class Piece:
    name: str  # the memo's file name
    start: float  # seconds into the pack
    end: float


@dataclass(frozen=True)
class Pack:
    audio: Any  # float32 mono 16 kHz
    pieces: tuple[Piece, ...]


def pack(chunks: list[tuple[str, Any]], room_s: float, gap_s: float) -> list[Pack]:
    """``chunks`` ((memo name, its chunk), in order) packed into windows of at most ``room_s``
    seconds of audio, with ``gap_s`` seconds of silence between two memos' chunks."""
    import numpy as np

    from daemon.audio import SAMPLE_RATE

    gap = np.zeros(int(round(gap_s * SAMPLE_RATE)), dtype=np.float32)
    packs: list[Pack] = []
    parts: list[Any] = []
    pieces: list[Piece] = []
    length = 0

    def close() -> None:
        nonlocal parts, pieces, length
        if parts:
            packs.append(Pack(np.concatenate(parts), tuple(pieces)))
        parts, pieces, length = [], [], 0

    for name, chunk in chunks:
        n = len(chunk.audio)
        if parts and length + len(gap) + n > room_s * SAMPLE_RATE:
            close()
        if parts:
            parts.append(gap)
            length += len(gap)
        pieces.append(Piece(name, length / SAMPLE_RATE, (length + n) / SAMPLE_RATE))
        parts.append(chunk.audio)
        length += n
    close()
    return packs


def split(p: Pack, segments: list[Any], gap_s: float) -> tuple[dict[str, list[str]], int]:
    """Each segment's text to the memo whose stretch (with half the gap on each side) it overlaps
    most; and how many segments overlapped two memos by more than CROSS_SECONDS each."""
    texts: dict[str, list[str]] = {piece.name: [] for piece in p.pieces}
    crossings = 0
    for seg in segments:
        overlaps = [
            (min(seg.end, piece.end + gap_s / 2) - max(seg.start, piece.start - gap_s / 2), piece.name)
            for piece in p.pieces
        ]
        if len({name for o, name in overlaps if o > CROSS_SECONDS}) > 1:  # a memo's own two chunks are no crossing
            crossings += 1
        best, name = max(overlaps)
        if best <= 0:  # a segment with no length between two stretches: the nearest one
            name = min(p.pieces, key=lambda piece: abs(piece.start - seg.start)).name
        texts[name].append(seg.text)
    return texts, crossings


def per_memo_wer(refs: dict[str, str], texts: dict[str, str]) -> dict[str, Any]:
    """Each memo scored against its own reference, the errors summed over the memos."""
    total = {"ref_words": 0, "substitutions": 0, "deletions": 0, "insertions": 0}
    for name, ref in refs.items():
        one = corpus_wer({name: ref}, {name: texts.get(name, "")})
        for k in total:
            total[k] += one[k]
    errors = total["substitutions"] + total["deletions"] + total["insertions"]
    return {"wer": errors / max(1, total["ref_words"]), **total}


def _chunks(w: wl.Workload, vad: Any) -> list[tuple[str, Any]]:
    from daemon import audio

    return [(f.name, c) for f in w.files for c in audio.iter_chunks(f, vad=vad)]


def _batched(engine: Any, chunks: list[tuple[str, Any]]) -> tuple[dict[str, str], int, int]:
    items = [c for _, c in chunks]
    results = engine.transcribe(items, language="en", task="transcribe")
    texts: dict[str, list[str]] = {}
    for (name, _), r in zip(chunks, results):
        texts.setdefault(name, []).extend(s.text for s in r.segments)
    return {k: " ".join(v) for k, v in texts.items()}, len(items), 0


def _packed(engine: Any, packs: list[Pack], gap_s: float) -> tuple[dict[str, str], int, int]:
    from daemon.audio import SAMPLE_RATE, Chunk

    items = [Chunk(i, 0.0, len(p.audio) / SAMPLE_RATE, p.audio, key=str(i)) for i, p in enumerate(packs)]
    results = engine.transcribe(items, language="en", task="transcribe")
    texts: dict[str, list[str]] = {}
    crossings = 0
    for p, r in zip(packs, results):
        got, crossed = split(p, list(r.segments), gap_s)
        crossings += crossed
        for name, parts in got.items():
            texts.setdefault(name, []).extend(parts)
    return {k: " ".join(v) for k, v in texts.items()}, len(items), crossings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.packing", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--gaps", default="1,2", help="seconds of silence between two memos in a pack, comma-separated")
    p.add_argument("--copies", type=int, default=4, help="how many times the backlog holds each clip (A: 4)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "packing.json")
    a = p.parse_args(argv)
    gaps = [float(g) for g in a.gaps.split(",") if g.strip()]
    hardware.short_openmp_spin()  # before torch loads, as in the daemon's worker


    from bench.run import machine
    from daemon import audio
    from daemon.config import ModelConfig
    from daemon.engines.loader import load_engine

    w = wl.short_files(WORK / "audio", copies=a.copies)
    engine = load_engine(ModelConfig(), WORK / "models")  # converts tiny.en there the first time
    chunks = _chunks(w, audio.default_vad())
    variants: dict[str, Any] = {"batched chunks, fit windows (whisperd)": lambda: _batched(engine, chunks)}
    packs: dict[float, list[Pack]] = {}
    for g in gaps:
        packs[g] = pack(chunks, audio.CHUNK_SECONDS, g)
        variants[f"packed, {g:g} s between memos"] = lambda g=g: _packed(engine, packs[g], g)
    print(f"{w.label}: {len(chunks)} chunks; {engine.info.precision} on {engine.info.device}", flush=True)
    engine.transcribe([c for _, c in chunks[:4]], language="en", task="transcribe")  # warm up

    runs: dict[str, dict[str, Any]] = {}
    for r in range(a.rounds):
        for label, run in variants.items():
            t0 = time.perf_counter()
            texts, windows, crossings = run()
            seconds = time.perf_counter() - t0
            score = per_memo_wer(w.refs, texts)
            row = runs.setdefault(label, {"seconds": [], "windows": windows, "crossings": crossings, "wer": score,
                                          "corpus_wer": corpus_wer(w.refs, texts)})
            row["seconds"].append(round(seconds, 3))
            print(f"round {r + 1}: {label}: {seconds:.2f} s, {windows} windows, WER per memo {100 * score['wer']:.2f}%, "
                  f"{crossings} crossing segments", flush=True)

    base = min(next(iter(runs.values()))["seconds"])
    print(f"\n{'variant':42s} {'best s':>7s} {'vs batched':>10s} {'windows':>8s} {'WER/memo':>9s} {'corpus':>7s} {'crossings':>9s}")
    for label, row in runs.items():
        best = min(row["seconds"])
        row["best_seconds"] = best
        row["speed_vs_batched"] = round(base / best, 3)
        print(f"{label:42s} {best:7.2f} {base / best:9.2f}x {row['windows']:8d} {100 * row['wer']['wer']:8.2f}% "
              f"{100 * row['corpus_wer']['wer']:6.2f}% {row['crossings']:9d}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"machine": machine(), "workload": w.label, "audio_seconds": w.audio_seconds,
                                 "precision": engine.info.precision, "rounds": a.rounds, "runs": runs}, indent=1))
    print(f"\nwritten: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
