"""bench.packing's bookkeeping: where each memo lands in a pack, and whose words a segment is."""

from __future__ import annotations

import numpy as np

from bench.packing import Piece, pack, split
from daemon.audio import SAMPLE_RATE, Chunk
from daemon.jobs import Segment


def _chunk(seconds: float, value: float) -> Chunk:
    return Chunk(0, 0.0, seconds, np.full(int(seconds * SAMPLE_RATE), value, dtype=np.float32))


def test_memos_are_packed_in_order_with_silence_between_and_a_memo_that_does_not_fit_starts_the_next():
    chunks = [("a", _chunk(10, 0.1)), ("b", _chunk(8, 0.2)), ("c", _chunk(10, 0.3))]
    packs = pack(chunks, room_s=24, gap_s=1)
    assert [[p.name for p in k.pieces] for k in packs] == [["a", "b"], ["c"]]
    first = packs[0]
    assert first.pieces == (Piece("a", 0.0, 10.0), Piece("b", 11.0, 19.0))
    assert len(first.audio) == 19 * SAMPLE_RATE
    assert np.all(first.audio[10 * SAMPLE_RATE : 11 * SAMPLE_RATE] == 0)  # the silence between them
    assert np.all(first.audio[11 * SAMPLE_RATE :] == np.float32(0.2))


def test_a_segment_goes_to_the_memo_it_overlaps_most_and_one_over_two_memos_is_a_crossing():
    p = pack([("a", _chunk(10, 0.1)), ("b", _chunk(8, 0.2)), ("b", _chunk(3, 0.2))], room_s=30, gap_s=1)[0]
    segments = [
        Segment(0.0, 9.8, "all of a"),
        Segment(9.0, 14.0, "end of a, start of b"),  # 1.5 s in a's stretch, 3.5 s in b's
        Segment(15.0, 23.0, "b's two chunks"),  # b's own two chunks: no crossing
    ]
    texts, crossings = split(p, segments, gap_s=1)
    assert texts == {"a": ["all of a"], "b": ["end of a, start of b", "b's two chunks"]}
    assert crossings == 1
