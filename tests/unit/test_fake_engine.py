"""The fake engine, a test double shipped with the package: deterministic text, shares as fitted
windows, its crash seam, and chosen from the configuration in the one place engines are."""

from __future__ import annotations

import numpy as np
import pytest

from daemon import config as config_mod
from daemon.audio import SAMPLE_RATE, Chunk
from daemon.engines.fake import FakeEngine, chunk_text
from daemon.engines.loader import load_engine


def chunk(source: str, index: int, start: float, seconds: float, key: str = "1") -> Chunk:
    return Chunk(index, start, start + seconds, np.zeros(int(seconds * SAMPLE_RATE), np.float32), key, source)


def test_each_chunk_gets_one_segment_named_after_its_file_and_index():
    engine = FakeEngine()
    chunks = [chunk("/in/memo one.m4a", 0, 0.0, 10.0), chunk("/in/sub/talk.wav", 3, 72.0, 24.0, key="2")]
    results = engine.transcribe(chunks, language=None, task="transcribe")
    assert [(r.index, r.start, r.end, r.language) for r in results] == [(0, 0.0, 10.0, "en"), (3, 72.0, 96.0, "en")]
    assert [[(s.start, s.end, s.text) for s in r.segments] for r in results] == [
        [(0.0, 10.0, "memo one, part 1.")], [(72.0, 96.0, "talk, part 4.")],
    ]
    assert engine.transcribe(chunks, language="de", task="transcribe")[0].segments == results[0].segments
    assert engine.batches == [[("1", 0), ("2", 3)]] * 2


def test_a_short_chunk_counts_for_part_of_a_window():
    engine = FakeEngine()
    assert engine.share(30.0, None) == 1.0
    assert engine.share(15.0, None) == 0.5
    assert engine.share(1.0, None) == 0.25


def test_a_batch_with_a_chunk_of_a_matching_file_crashes_before_saying_anything():
    crashes = []
    engine = FakeEngine(crash_on="poison*", crash=lambda: crashes.append(True))
    engine.transcribe([chunk("/in/good.wav", 0, 0.0, 5.0)], language=None, task="transcribe")
    assert crashes == []
    engine.transcribe([chunk("/in/good.wav", 1, 5.0, 5.0), chunk("/in/poison.wav", 0, 0.0, 5.0)], language=None, task="transcribe")
    assert crashes == [True]
    assert chunk_text("/in/poison.wav", 0) == "poison, part 1."


@pytest.mark.parametrize("crash_on", [None, "*.flac"])
def test_the_configuration_chooses_it(tmp_path, crash_on):
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(
        "model: {engine: fake, batch_size: 4" + (f", fake_crash_on: '{crash_on}'" if crash_on else "") + "}\n"
        f"folders: [{{inbox: {tmp_path}/inbox}}]\n"
    )
    cfg = config_mod.load(cfg_path, check_permissions=False)
    engine = load_engine(cfg.model, tmp_path)
    assert isinstance(engine, FakeEngine)
    assert (engine.info.name, engine.batch_size, engine.crash_on) == ("fake", 4, crash_on)
