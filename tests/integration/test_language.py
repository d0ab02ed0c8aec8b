"""A file's language, detected once from its first speech with the real multilingual base, kept in
the job's checkpoint, and said in the JSON; the worker in-process on a real queue."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from daemon import config as config_mod
from daemon import files
from daemon.engines.loader import load_engine
from daemon.jobs import Checkpoint, Permission, State
from daemon.language import Decision
from daemon.queue import Queue
from daemon.worker import Worker
from tests import speech

ENGLISH_CLIP = "ls_1988-24833-0000.flac"
OTHER_CLIP = "ls_3752-4944-0000.flac"


@pytest.fixture(scope="module")
def voices(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("voices")
    return {
        "german": speech.espeak(d / "german.wav", speech.GERMAN, "de"),
        "yes": speech.espeak(d / "yes.wav", "Ja.", "de"),  # under a second of speech
    }


class _Counting:
    """The real engine; counts the language detections asked of it."""

    def __init__(self, engine):
        self._engine, self.detections = engine, 0

    def detect_language(self, audio):
        self.detections += 1
        return self._engine.detect_language(audio)

    def __getattr__(self, name):
        return getattr(self._engine, name)


def _setup(root: Path, cache: Path, folders: dict[str, str], dropped: dict[str, tuple[str, Path]]):
    """A config with one folder per entry of ``folders`` (name → its settings, as YAML), a queue holding
    ``dropped`` (file name → (folder name, source)), and a worker on the real base model."""
    entries = []
    for name, settings in folders.items():
        for d in ("inbox", "outbox", "archive", "failed"):
            (root / name / d).mkdir(parents=True)
        entries.append(f"{{inbox: {root}/{name}/inbox, {settings}}}")
    (root / "state").mkdir()
    cfg_path = root / "config.yaml"
    cfg_path.write_text(
        f"database: sqlite:///{root}/state/queue.db\n"
        f"model: {{name: base, cache_dir: {cache}, batch_size: 8}}\n"
        f"folders: [{', '.join(entries)}]\n"
        "thermal: {source: none}\npower: {prevent_sleep: false}\nnotify: false\n"
    )
    cfg = config_mod.load(cfg_path, check_permissions=False)
    queue = Queue(cfg.database)
    index = {name: i for i, name in enumerate(folders)}
    for file_name, (folder, source) in dropped.items():
        dest = root / folder / "inbox" / file_name
        shutil.copy(source, dest)
        st = dest.stat()
        queue.enqueue(folder=index[folder], path=str(dest), rel=file_name, size=st.st_size, mtime=st.st_mtime,
                      content_hash=files.content_hash(dest), now=time.time())
    engines: list[_Counting] = []

    def factory():
        engines.append(_Counting(load_engine(cfg.model, cache)))
        return engines[0]

    worker = Worker("host:1:w0", cfg, queue, engine_factory=factory, permission=lambda _w: Permission(claim=True),
                    stop=threading.Event(), wake=threading.Event())
    return queue, worker, engines


def _drain(worker: Worker, queue: Queue) -> None:
    for _ in range(100):
        if not worker.step() and queue.pending() == 0:
            return
    raise AssertionError("the worker did not finish its jobs")


def _json(root: Path, folder: str, stem: str) -> dict:
    return json.loads((root / folder / "output" / f"{stem}.json").read_text(encoding="utf-8"))


def test_each_file_language_is_detected_once_among_the_folder_languages(tmp_path, model_cache, base_checkpoint, voices):
    queue, worker, engines = _setup(
        tmp_path, model_cache, {"any": "language: auto", "choose": "language: [de, fr]"},
        {
            "german.wav": ("any", voices["german"]),
            "english.flac": ("any", speech.DATA / ENGLISH_CLIP),
            "english-in-de-fr.flac": ("choose", speech.DATA / OTHER_CLIP),
            "yes.wav": ("choose", voices["yes"]),
        },
    )
    try:
        _drain(worker, queue)
        assert queue.counts()[State.DONE.value] == 4
    finally:
        queue.close()
    assert engines[0].detections == 4  # once per file, whatever its number of chunks

    german = _json(tmp_path, "any", "german")
    assert german["language"] == "de" and german["language_detection"]["how"] == "detected"
    assert "morgen" in german["text"].lower(), german["text"]
    english = _json(tmp_path, "any", "english")
    assert english["language"] == "en" and english["language_detection"]["probability"] > 0.9
    assert speech.wer(speech.manifest()[ENGLISH_CLIP], english["text"]) < 0.25, english["text"]
    # restricted to German and French, English speech is never English
    restricted = _json(tmp_path, "choose", "english-in-de-fr")
    assert restricted["language"] in ("de", "fr")
    # under a second of speech: the list's first language, and the JSON says why
    short = _json(tmp_path, "choose", "yes")
    assert short["language_detection"]["how"] == "fallback" and short["language"] == "de"
    assert "s long" in short["language_detection"]["reason"]


def test_a_resumed_job_keeps_the_language_of_its_checkpoint(tmp_path, model_cache, base_checkpoint, voices):
    """The checkpoint says Dutch (as if detected before a restart): the German memo goes on in
    Dutch, with no detection of its own."""
    queue, worker, engines = _setup(tmp_path, model_cache, {"any": "language: auto"}, {"german.wav": ("any", voices["german"])})
    try:
        job = queue.claim("earlier", now=time.time(), lease_seconds=60)
        kept = Decision("nl", "detected", 0.93)
        assert queue.save_checkpoint(job.id, "earlier", Checkpoint(language="nl", language_detection=kept),
                                     duration=9.0, now=time.time(), lease_seconds=60)
        assert queue.release(job.id, "earlier")
        _drain(worker, queue)
        assert queue.get(job.id).state is State.DONE
    finally:
        queue.close()
    assert engines[0].detections == 0
    result = _json(tmp_path, "any", "german")
    assert result["language"] == "nl" and result["language_detection"] == {"language": "nl", "how": "detected", "probability": 0.93}


def test_mixed_languages_detects_each_chunk_on_its_own(tmp_path, model_cache, base_checkpoint, voices):
    """German, a pause, then English: with mixed_languages each passage is transcribed in its own
    language (detected once per file, the English passage came out as "Guten Morgen, alle! ...")."""
    d = tmp_path / "speech"
    d.mkdir()
    german = speech.read(voices["german"])
    english = speech.read(speech.espeak(d / "english.wav", speech.ENGLISH, "en-us"))
    pause = np.zeros(6 * speech.SR, dtype=np.float32)  # longer than a pause inside a chunk: a chunk each
    mixed = speech.write(d / "mixed.wav", np.concatenate([german, pause, english]))
    queue, worker, engines = _setup(tmp_path / "tree", model_cache, {"mixed": "language: auto, mixed_languages: true"},
                                    {"mixed.wav": ("mixed", mixed)})
    try:
        _drain(worker, queue)
    finally:
        queue.close()
    result = _json(tmp_path / "tree", "mixed", "mixed")
    assert engines[0].detections >= 2
    assert result["language"] == "de" and result["language_detection"]["how"] == "per chunk"
    text = result["text"].lower()
    assert "guten morgen" in text and "good morning" in text and "quarter" in text, text
