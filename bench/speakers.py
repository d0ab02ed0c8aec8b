"""Speaker labels measured: conversations built from LibriSpeech turns whose speakers are known.

    python -m bench.speakers                 # 2-, 3- and 4-speaker conversations and a 5-minute one
    python -m bench.speakers --long 60       # also a 60-minute one (CPU heavy: minutes)

Each conversation takes turns from different LibriSpeech readers (one utterance a turn,
short gaps between), so the true turns are known. The score is the share of speech time
labelled with the right speaker, after the best mapping of found speakers to true ones (a
speaker found too many or too few counts against it), and the number of speakers found.
The diarization runs as the worker runs it: voice prints of each chunk of the worker's own
stream, then clustering; its time and the process's peak memory are reported.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from daemon import audio
from daemon.speakers import Turn

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "librispeech"
# readers with at least 10 s of speech in tests/data/librispeech, the most first (1272's 8 kHz copy
# is left out: the same reader over a telephone's band is another channel, not another speaker)
READERS = ("2412", "1221", "1988", "1272", "3752")


@dataclass(frozen=True)
class Conversation:
    samples: np.ndarray  # float32 mono 16 kHz
    turns: tuple[Turn, ...]  # the truth: who spoke when (speaker = index in ``readers``)
    readers: tuple[str, ...]


def utterances(reader: str, data: Path = DATA) -> list[np.ndarray]:
    """The reader's utterances, each trimmed to its speech (Silero VAD, 0.1 s kept either
    side), so that a turn's span is speech and the silence between turns is the gap."""
    vad = audio.default_vad()
    out = []
    for path in sorted(data.glob(f"ls_{reader}-*")):
        if path.suffix in (".wav", ".flac") and "-8k" not in path.stem:
            u = np.concatenate(list(audio.iter_pcm(path, block_seconds=60.0)))
            regions = audio.speech_regions(vad.probabilities(u))
            pad = audio.SAMPLE_RATE // 10
            a = max(0, regions[0][0] * audio.Vad.FRAME - pad)
            b = min(len(u), regions[-1][1] * audio.Vad.FRAME + pad)
            out.append(u[a:b])
    return out


def build(readers: Sequence[str], *, seconds: float = 0.0, gap: float = 0.6, seed: int = 0,
          data: Path = DATA) -> Conversation:
    """The readers take turns, one utterance each, round and round, until every utterance was
    said once and ``seconds`` of audio are reached (for a long conversation, utterances are
    repeated, shuffled, each time a different part of it: see ``_retold``). Gaps of ``gap`` ±
    0.2 s of silence between turns."""
    rng = random.Random(seed)
    pools = {r: utterances(r, data) for r in readers}
    queues = {r: list(p) for r, p in pools.items()}
    pieces: list[np.ndarray] = []
    turns: list[Turn] = []
    t = 0.0
    i = 0
    first_pass = sum(len(u) for p in pools.values() for u in p) / audio.SAMPLE_RATE
    while True:
        if all(not q for q in queues.values()) and t >= seconds:
            break
        reader = readers[i % len(readers)]
        i += 1
        if not queues[reader]:
            if t < seconds:
                queues[reader] = rng.sample(pools[reader], len(pools[reader]))
            else:
                continue
        u = queues[reader].pop(0)
        if t >= first_pass:
            u = _retold(u, rng)
        pieces.append(u)
        turns.append(Turn(t, t + len(u) / audio.SAMPLE_RATE, readers.index(reader)))
        t += len(u) / audio.SAMPLE_RATE
        g = max(0.1, gap + rng.uniform(-0.2, 0.2))
        pieces.append(np.zeros(int(g * audio.SAMPLE_RATE), np.float32))
        t += int(g * audio.SAMPLE_RATE) / audio.SAMPLE_RATE
    return Conversation(np.concatenate(pieces).astype(np.float32), tuple(turns), tuple(readers))


def _retold(u: np.ndarray, rng: random.Random) -> np.ndarray:
    """A repeated utterance said anew: a part of it (at least 2 s, from a random point) at another
    loudness, with faint noise. Repeated word for word, the same samples give the same voice
    prints, which cluster by utterance instead of by speaker: no recording repeats itself so."""
    sr = audio.SAMPLE_RATE
    n = len(u)
    length = min(n, max(2 * sr, int(n * rng.uniform(0.4, 1.0))))
    start = rng.randrange(0, n - length + 1)
    gen = np.random.default_rng(rng.randrange(1 << 30))
    part = u[start : start + length] * rng.uniform(0.6, 1.4)
    return (part + gen.normal(0, 0.003, len(part))).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray) -> Path:
    import wave

    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(audio.SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
    return path


def score(truth: Sequence[Turn], found: Sequence[tuple[float, float, object]], step: float = 0.01) -> float:
    """Share of the true speech time whose found speaker maps to the true one, under the
    mapping of found to true speakers that gets the most time right. ``found``: (start,
    end, label) of any hashable label. Speech no found turn covers counts as wrong."""
    from scipy.optimize import linear_sum_assignment

    end = max(t.end for t in truth)
    n = int(np.ceil(end / step)) + 1
    true_at = np.full(n, -1)
    for t in truth:
        true_at[int(t.start / step) : int(t.end / step)] = t.speaker
    labels = sorted({f[2] for f in found}, key=str)
    found_at = np.full(n, -1)
    for s, e, lab in found:
        found_at[int(s / step) : int(e / step)] = labels.index(lab)
    speech = true_at >= 0
    k_true = int(true_at.max()) + 1
    m = np.zeros((k_true, max(1, len(labels))))
    for a, b in zip(true_at[speech], found_at[speech]):
        if b >= 0:
            m[a, b] += 1
    rows, cols = linear_sum_assignment(-m)
    return float(m[rows, cols].sum() / speech.sum())


def diarize(printer, conv: Conversation, count: int | None = None) -> tuple[list[Turn], float, int]:
    """(turns found, seconds, prints): prints of the worker's chunks of the conversation, then
    the clustering, as the worker does it. Only the prints and the clustering are timed (the
    decoding and cutting are the transcription's)."""
    import tempfile

    took = 0.0
    voices = []
    with tempfile.TemporaryDirectory() as tmp:
        path = write_wav(Path(tmp) / "conversation.wav", conv.samples)
        for c in audio.iter_chunks(path):
            t0 = time.perf_counter()
            voices.extend(printer.prints(c.audio, c.start))
            took += time.perf_counter() - t0
    t0 = time.perf_counter()
    turns = printer.turns(voices, count)
    return turns, took + time.perf_counter() - t0, len(voices)


_SPEAKERS_LINE = re.compile(r"(\d+) found from (\d+) voice prints \(([\d.]+) s taking them in this run, ([\d.]+) s clustering\)")


def daemon(minutes: float, root: Path) -> list[dict]:
    """``whisperd run --drain`` on one conversation of ``minutes``, with ``speakers`` off and on:
    wall time, peak RSS of daemon + worker, the labels' score and the worker's own account of
    the time its voice prints and clustering took."""
    import yaml

    from bench import whisperd_cli as wd
    from bench.run import WORK
    from daemon.engines.models import resolve_checkpoint

    cache = WORK / "models"
    cache.mkdir(parents=True, exist_ok=True)
    resolve_checkpoint("tiny.en", cache)
    conv = build(READERS[:4], seconds=minutes * 60)
    src = write_wav(root / "conversation.wav", conv.samples)
    conv_turns = conv.turns
    del conv  # not held while the daemon runs
    rows = []
    for on in (False, True):
        tree = wd.make_tree(root / ("on" if on else "off"), cache, wd.Settings(model="tiny.en", language="en"), [src])
        doc = yaml.safe_load(tree.config.read_text())
        doc["folders"][0]["speakers"] = on
        doc["folders"][0]["formats"] = ["json", "txt"]
        tree.config.write_text(yaml.safe_dump(doc, sort_keys=False))
        r = wd.drain(tree)
        row = {"speakers": on, "wall_s": r["wall_s"], "work_s": r["work_s"], "peak_rss_mb": r["peak_rss_mb"],
               "foreign_cores": r["foreign_cores"], "returncode": r["returncode"]}
        if on:
            out = json.loads((tree.outbox / "conversation.json").read_text())
            segs = out["segments"]
            row["right"] = score(conv_turns, [(x["start"], x["end"], x["speaker"]) for x in segs])
            row["found"] = len({x["speaker"] for x in segs})
            m = _SPEAKERS_LINE.search(tree.log_path.read_text())
            if m:
                row.update(prints=int(m.group(2)), print_s=float(m.group(3)), cluster_s=float(m.group(4)))
        rows.append(row)
        shutil.rmtree(tree.root, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--long", type=float, default=0, help="also a conversation this many minutes long")
    ap.add_argument("--known", action="store_true", help="tell the clustering the number of speakers")
    ap.add_argument("--daemon", type=float, nargs="*", metavar="MINUTES",
                    help="instead: whisperd run --drain on conversations this long, speakers off and on")
    args = ap.parse_args(argv)
    if args.daemon:
        import tempfile

        print("| recording | speakers | wall | work | peak RSS (daemon + worker) | others' cores | speakers found | speech time right | prints | printing | clustering |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for minutes in args.daemon:
            with tempfile.TemporaryDirectory() as tmp:
                for r in daemon(minutes, Path(tmp)):
                    extra = (f"{r.get('found')} of 4 | {r.get('right', 0):.1%} | {r.get('prints')} | {r.get('print_s')} s | {r.get('cluster_s')} s"
                             if r["speakers"] else "| | | |")
                    print(f"| 4 speakers, {minutes:g} min | {'on' if r['speakers'] else 'off'} | {r['wall_s']:.1f} s | {r['work_s']:.1f} s "
                          f"| {r['peak_rss_mb']:.0f} MB | {r['foreign_cores']:.2f} | {extra} |", flush=True)
        return
    from daemon.voices import Printer

    t0 = time.perf_counter()
    printer = Printer(Path("state/cache"))
    print(f"models loaded in {time.perf_counter() - t0:.1f} s")
    cases = [("2 speakers", READERS[:2], 0.0), ("3 speakers", READERS[:3], 0.0), ("4 speakers", READERS[:4], 0.0),
             ("4 speakers, 5 min", READERS[:4], 300.0)]
    if args.long:
        cases.append((f"4 speakers, {args.long:.0f} min", READERS[:4], args.long * 60))
    print("| recording | audio | speakers found | speech time right | diarization | x real time | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for name, readers, seconds in cases:
        conv = build(readers, seconds=seconds)
        dur = len(conv.samples) / audio.SAMPLE_RATE
        turns, took, _ = diarize(printer, conv, len(readers) if args.known else None)
        right = score(conv.turns, [(t.start, t.end, t.speaker) for t in turns])
        found = len({t.speaker for t in turns})
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"| {name} | {dur:.0f} s | {found} of {len(readers)} | {right:.1%} | {took:.1f} s | {took / dur:.3f} | {rss:.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
