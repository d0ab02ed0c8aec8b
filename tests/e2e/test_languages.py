"""The example config's defaults (the multilingual base, language: auto) on a German memo, through the real CLI."""

import json
from pathlib import Path

import yaml

from tests import speech
from tests.conftest import make_tree

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"


def test_the_example_config_transcribes_a_german_memo_as_german(tmp_path, model_cache, base_checkpoint):
    tree = make_tree(tmp_path, model_cache)
    doc = yaml.safe_load(EXAMPLE.read_text())
    assert doc["model"]["name"] == "base" and doc["folders"][0]["language"] == "auto"  # the defaults under test
    doc["model"]["cache_dir"] = str(model_cache)  # base converted once for the session, as a first run would
    doc["watch"].update(settle_seconds=0.3, poll_seconds=0.1)
    doc["thermal"]["source"] = "none"
    doc["power"]["prevent_sleep"] = False
    doc["notify"] = False
    tree.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    speech.espeak(tree.inbox / "memo.wav", speech.GERMAN, "de")

    result = tree.run("run", "--drain")
    assert result.returncode == 0, result.stderr
    out = json.loads((tree.outbox / "memo.json").read_text(encoding="utf-8"))
    assert out["model"] == "base" and out["language"] == "de", out
    assert out["language_detection"]["how"] == "detected"
    text = (tree.outbox / "memo.txt").read_text(encoding="utf-8").lower()
    assert "guten morgen" in text and "freitag" in text, text
    assert tree.files(tree.archive) == ["memo.wav"]
