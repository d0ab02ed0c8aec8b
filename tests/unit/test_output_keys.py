"""The per-folder output keys through the whole worker and pipeline, on the fake engine (which says
the file's name): the Chinese script in every file written, and folders with another prompt or word
timings never sharing a batch."""

from __future__ import annotations

import json

from daemon.engines.fake import FakeEngine
from daemon.queue import Queue
from tests.fakes import drain, enqueue, fake_worker, make_config, tone


def test_a_chinese_folder_writes_every_format_in_the_script_it_asks_for(tmp_path):
    root = tmp_path
    cfg = make_config(root, folders=f"  - {{inbox: {root}/zh, output: {root}/zh-out, archive: {root}/zh-arch, "
                                    f"failed: {root}/zh-fail, language: zh, chinese: simplified}}\n")
    (root / "zh").mkdir()
    queue = Queue(cfg.database)
    try:
        enqueue(queue, cfg, tone(root / "zh" / "會議記錄.wav", 4.0), folder=1)
        enqueue(queue, cfg, tone(cfg.folders[0].inbox / "會議.wav", 4.0), folder=0)  # language en: left alone
        drain(fake_worker(cfg, queue, FakeEngine(batch_size=cfg.model.batch_size)), queue)
    finally:
        queue.close()
    out = {p.suffix: p.read_text(encoding="utf-8") for p in (root / "zh-out").iterdir()}
    assert sorted(out) == [".json", ".srt", ".txt", ".vtt"]
    doc = json.loads(out.pop(".json"))
    assert doc["language"] == "zh" and doc["text"] == "会议记录, part 1."
    for text in out.values():
        assert "会议记录" in text and "會議記錄" not in text, text
    assert (cfg.folders[0].output / "會議.txt").read_text(encoding="utf-8").strip() == "會議, part 1."


def test_folders_with_another_prompt_or_word_timings_never_share_a_batch(tmp_path):
    root = tmp_path
    extra = ""
    for name, keys in (("p", "prompt: 'Anna Kowalczyk, OKR'"), ("w", "words: true")):
        (root / name).mkdir()
        extra += (f"  - {{inbox: {root}/{name}, output: {root}/{name}-out, archive: {root}/{name}-arch, "
                  f"failed: {root}/{name}-fail, language: en, {keys}}}\n")
    cfg = make_config(root, folders=extra)
    queue = Queue(cfg.database)
    try:
        enqueue(queue, cfg, tone(cfg.folders[0].inbox / "plain.wav", 4.0), folder=0)
        enqueue(queue, cfg, tone(root / "p" / "prompted.wav", 4.0), folder=1)
        enqueue(queue, cfg, tone(root / "w" / "timed.wav", 4.0), folder=2)
        enqueue(queue, cfg, tone(cfg.folders[0].inbox / "plain2.wav", 4.0), folder=0)
        engine = FakeEngine(batch_size=cfg.model.batch_size)
        drain(fake_worker(cfg, queue, engine), queue)
        names = {str(j.id): j.name for j in queue.all()}
    finally:
        queue.close()
    batches = sorted(sorted(names[key] for key, _ in b) for b in engine.batches)
    assert batches == [["plain.wav", "plain2.wav"], ["prompted.wav"], ["timed.wav"]]
