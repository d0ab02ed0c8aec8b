"""The real `whisperd` CLI with the per-folder output keys: word timings, the prompt and subtitle
lines with tiny.en on LibriSpeech; translation with the multilingual base on Spanish speech
spoken by espeak-ng."""

import json
import shutil
import subprocess

import numpy as np

from tests import speech
from tests.conftest import make_tree
from tests.e2e.test_spine import srt_times

SPANISH = (
    "Buenos días. Hoy hablamos del tiempo. Mañana va a llover, pero el fin de semana hace sol. "
    "Los niños juegan en el jardín y el perro duerme debajo de la mesa."
)
ENGLISH = {"good", "morning", "today", "weather", "time", "rain", "weekend", "sun", "sunny", "children", "play", "garden", "dog", "table"}
SPANISH_ONLY = {"buenos", "días", "hoy", "niños", "jardín", "perro", "mesa"}


def folder_keys(tree, keys: str, model: str | None = None) -> None:
    """Add ``keys`` (YAML lines) to the tree's folder entry, and point model.name elsewhere."""
    text = tree.config.read_text()
    text = text.replace("    failed: failed\n", "    failed: failed\n" + "".join(f"    {line.strip()}\n" for line in keys.strip().splitlines()))
    if model:
        text = text.replace("  name: tiny.en\n", f"  name: {model}\n")
    tree.config.write_text(text)


def words_of(text: str) -> set[str]:
    import re

    return set(re.findall(r"[\w']+", text.lower()))


def test_word_timings_prompt_and_subtitle_lines(tmp_path, model_cache):
    tree = make_tree(tmp_path, model_cache)
    folder_keys(tree, """
        words: true
        prompt: "Anna Kowalczyk, Kubernetes, OKR"
        max_line_width: 30
        max_line_count: 1
    """)
    clips = ["ls_1988-24833-0001.flac", "ls_2412-153948-0000.flac"]
    samples, reference = speech.concat(clips, gap=1.5)
    lead = 2.0  # seconds of silence first, so that times into the file differ from times into the speech
    samples = np.concatenate([np.zeros(int(lead * speech.SR), dtype=np.float32), samples])
    speech.write(tree.inbox / "memo.flac", samples)

    result = tree.run("run", "--drain")
    assert result.returncode == 0, result.stderr
    doc = json.loads((tree.outbox / "memo.json").read_text())
    assert speech.wer(reference, doc["text"]) < 0.15, doc["text"]
    assert not words_of(doc["text"]) & {"anna", "kowalczyk", "kubernetes", "okr"}
    duration = len(samples) / speech.SR
    words = [w for s in doc["segments"] for w in s["words"]]
    assert len(words) >= len(reference.split()) - 3
    assert set(words[0]) == {"word", "start", "end", "probability"}
    assert all(0 <= w["start"] <= w["end"] <= duration for w in words)
    assert all(a["start"] <= b["start"] for a, b in zip(words, words[1:]))
    assert lead - 0.3 <= words[0]["start"] < lead + 0.8  # offset into the whole file
    second = len(speech.read(clips[0])) / speech.SR + 1.5 + lead  # where the second clip starts
    first_word = speech.manifest()[clips[1]].split()[0].lower()
    assert any(words_of(w["word"]) == {first_word} and abs(w["start"] - second) < 0.6 for w in words)

    srt = (tree.outbox / "memo.srt").read_text()
    blocks = [b.split("\n") for b in srt.strip().split("\n\n")]
    assert all(len(b) == 3 and len(b[2]) <= 30 for b in blocks), blocks  # number, times, one line of text
    times = srt_times(srt)
    assert all(0 <= a <= b <= duration for a, b in times)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(times, times[1:]))


def test_translate_gives_english_from_spanish_speech(tmp_path, model_cache, base_checkpoint):
    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng is needed (apt-get install espeak-ng; .ci/run installs it)"
    tree = make_tree(tmp_path, model_cache)
    folder_keys(tree, """
        task: translate
        words: true
    """, model="base")  # converted into model_cache once per session (base_checkpoint)
    wav = tmp_path / "voz.wav"
    subprocess.run([espeak, "-v", "es", "-s", "150", "-w", str(wav), SPANISH], check=True, capture_output=True, timeout=60)
    shutil.copy(wav, tree.inbox / "nota.wav")

    result = tree.run("run", "--drain", timeout=600)
    assert result.returncode == 0, result.stderr
    doc = json.loads((tree.outbox / "nota.json").read_text())
    assert (doc["task"], doc["language"]) == ("translate", "es")
    said = words_of(doc["text"])
    assert len(said & ENGLISH) >= 5 and not said & SPANISH_ONLY, doc["text"]
    # base's alignment heads time the words of the translation
    words = [w for s in doc["segments"] for w in s["words"]]
    assert len(words) >= 15 and all(0 <= w["start"] <= w["end"] <= doc["duration"] + 0.01 for w in words)
    assert words[-1]["end"] - words[0]["start"] > 0.5 * doc["duration"]
