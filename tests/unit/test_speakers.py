"""Speaker turns and labels (daemon/speakers.py) and how the outputs show them."""

import json
from dataclasses import replace

import numpy as np

from daemon import outputs
from daemon.jobs import Checkpoint, Segment, Voice, Word
from daemon.speakers import Turn, label, merge_to, speaker_at, turns_from_labels


def test_prints_of_one_speaker_join_and_overlaps_of_two_change_halfway():
    spans = [(0.0, 1.5), (0.6, 2.1), (1.2, 2.7), (2.1, 3.6), (2.7, 4.2)]
    turns = turns_from_labels(spans, [7, 7, 7, 3, 3])
    assert turns == [Turn(0.0, 2.4, 7), Turn(2.4, 4.2, 3)]


def test_a_flicker_shorter_than_a_turn_is_dropped_and_its_neighbours_join():
    spans = [(0.0, 1.5), (0.6, 2.1), (2.0, 2.5), (2.4, 3.9), (3.0, 4.5)]
    assert turns_from_labels(spans, [0, 0, 1, 0, 0]) == [Turn(0.0, 4.5, 0)]


def test_a_silence_between_turns_of_one_speaker_keeps_them_apart_only_as_spans():
    turns = turns_from_labels([(0.0, 1.5), (5.0, 6.5)], [0, 0])
    assert [t.speaker for t in turns] == [0]
    assert (turns[0].start, turns[0].end) == (0.0, 6.5)


def test_a_segment_goes_to_the_speaker_holding_most_of_it_or_the_nearest():
    turns = [Turn(0.0, 4.0, 5), Turn(4.0, 10.0, 2)]
    assert speaker_at(turns, 3.0, 6.0) == 2
    assert speaker_at(turns, 1.0, 4.5) == 5
    assert speaker_at([Turn(0.0, 1.0, 5), Turn(8.0, 9.0, 2)], 6.0, 7.0) == 2
    assert speaker_at([], 0.0, 1.0) is None


def test_speakers_are_named_in_order_of_first_appearance():
    turns = [Turn(0.0, 5.0, 4), Turn(5.0, 10.0, 1), Turn(10.0, 15.0, 4), Turn(15.0, 20.0, 0)]
    segs = [Segment(0.5, 4.0, " Hello."), Segment(5.5, 9.0, " Hi."), Segment(10.5, 14.0, " Well."),
            Segment(15.5, 19.0, " Me too.")]
    assert [s.speaker for s in label(segs, turns)] == ["Speaker 1", "Speaker 2", "Speaker 1", "Speaker 3"]


def test_without_turns_every_segment_is_speaker_1():
    segs = [Segment(0.0, 2.0, " One voice."), Segment(2.0, 3.0, " Still.")]
    assert [s.speaker for s in label(segs, [])] == ["Speaker 1", "Speaker 1"]


def test_a_segment_with_timed_words_is_split_where_the_speaker_changes():
    seg = Segment(0.0, 4.0, " Are you done? Yes.", words=(Word(" Are", 0.0, 0.4, 0.9), Word(" you", 0.4, 0.8, 0.9),
                                                           Word(" done?", 0.8, 1.6, 0.9), Word(" Yes.", 2.6, 3.2, 0.9)))
    out = label([seg], [Turn(0.0, 2.0, 0), Turn(2.0, 4.0, 1)])
    assert [(s.start, s.end, s.text, s.speaker) for s in out] == [
        (0.0, 1.6, " Are you done?", "Speaker 1"), (2.6, 3.2, " Yes.", "Speaker 2")]
    assert out[1].words == (Word(" Yes.", 2.6, 3.2, 0.9),)
    # without word timings, the speaker holding most of it
    assert label([replace(seg, words=())], [Turn(0.0, 2.0, 0), Turn(2.0, 4.0, 1)])[0].speaker == "Speaker 1"


def test_a_known_count_merges_the_most_alike_clusters():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=16), rng.normal(size=16)
    x = np.stack([a, a + 0.01, b, b + 0.01, a + 0.02])
    assert merge_to([0, 1, 2, 2, 1], x, 2) == [0, 0, 2, 2, 0]
    assert merge_to([0, 1, 2], x[:3], 5) == [0, 1, 2]


def test_voice_prints_survive_the_checkpoint():
    v = np.arange(192, dtype=np.float16).tobytes()
    cp = Checkpoint(offset=3.0, segments=(Segment(0.0, 1.0, " Hi.", speaker="Speaker 2"),), voices=(Voice(0.5, 2.0, v),))
    back = Checkpoint.from_json(cp.to_json())
    assert back == cp and back.voices[0].vector == v
    assert "voices" not in json.loads(Checkpoint().to_json())


def _transcript(segments):
    return outputs.Transcript(source="talk.m4a", segments=tuple(segments), language="en", duration=12.0,
                              model="tiny.en", engine="openai-whisper", device="cpu", precision="fp32",
                              processing_seconds=1.0)


TALK = [Segment(0.0, 2.0, " Good morning.", speaker="Speaker 1"), Segment(2.0, 4.0, " How are you?", speaker="Speaker 1"),
        Segment(4.5, 6.0, " Fine, thanks.", speaker="Speaker 2"), Segment(7.0, 9.0, " Let us begin.", speaker="Speaker 1")]


def test_txt_shows_one_paragraph_a_turn():
    text = outputs.render(_transcript(TALK), "txt").decode()
    assert text == ("Speaker 1: Good morning. How are you?\n\nSpeaker 2: Fine, thanks.\n\n"
                    "Speaker 1: Let us begin.\n\n")


def test_srt_names_the_speaker_at_each_change_and_vtt_tags_every_cue():
    srt = outputs.render(_transcript(TALK), "srt").decode()
    lines = [l for l in srt.splitlines() if l and not l[0].isdigit()]
    # a cue never holds two speakers, though the writers join one speaker's short segments
    assert lines == ["Speaker 1: Good morning. How are you?", "Speaker 2: Fine, thanks.", "Speaker 1: Let us begin."]
    vtt = outputs.render(_transcript(TALK), "vtt").decode()
    cues = [l for l in vtt.splitlines() if l.startswith("<v ")]
    assert cues == ["<v Speaker 1>Good morning. How are you?", "<v Speaker 2>Fine, thanks.", "<v Speaker 1>Let us begin."]
    doc = json.loads(outputs.render(_transcript(TALK), "json"))
    assert [s["speaker"] for s in doc["segments"]] == ["Speaker 1", "Speaker 1", "Speaker 2", "Speaker 1"]


def test_without_speakers_the_outputs_are_unchanged():
    plain = [Segment(s.start, s.end, s.text) for s in TALK]
    assert outputs.render(_transcript(plain), "txt").decode().splitlines()[0] == "Good morning."
    assert "speaker" not in json.loads(outputs.render(_transcript(plain), "json"))["segments"][0]


def test_speakers_is_true_false_or_a_count(tmp_path):
    import os

    import pytest

    from daemon.config import load
    from daemon.errors import ConfigError

    def folder(value):
        p = tmp_path / "config.yaml"
        p.write_text(f"folders:\n  - inbox: in\n    speakers: {value}\n")
        os.chmod(p, 0o644)
        return load(p).folders[0]

    assert (folder("false").speakers, folder("false").speaker_count) == (0, None)
    assert (folder("true").speakers, folder("true").speaker_count) == (-1, None)
    assert folder("3").speaker_count == 3
    for bad in ("0", "yes please", "2.5"):
        with pytest.raises(ConfigError, match="speakers"):
            folder(bad)


def test_doctor_says_whether_speaker_labels_are_installed_and_work(tmp_path, monkeypatch):
    from daemon import doctor, voices
    from daemon.config import load

    def config(speakers):
        p = tmp_path / "config.yaml"
        p.write_text(f"folders:\n  - inbox: in\n    speakers: {speakers}\n")
        p.chmod(0o644)
        return load(p)

    ok = doctor.check_speakers(config("true"), self_test=lambda cache: f"voice prints work (cache {cache.name})")
    assert ok.status == doctor.Status.OK and "voice prints work (cache speakers)" in ok.detail

    def broken(cache):
        raise OSError("libfbank_extractor.so: cannot open shared object file")

    bad = doctor.check_speakers(config("true"), self_test=broken)
    assert bad.status == doctor.Status.FAIL and "libfbank_extractor" in bad.detail
    assert doctor.check_speakers(config("false")).status == doctor.Status.OK
    monkeypatch.setattr(voices, "installed", lambda: False)
    missing = doctor.check_speakers(config("2"))
    assert missing.status == doctor.Status.FAIL and "pip install 'whisperd[speakers]'" in missing.fix


def test_the_governor_counts_the_speaker_models_where_a_folder_wants_labels():
    from daemon.governor import estimate_memory

    plain = estimate_memory("tiny.en")
    labelled = estimate_memory("tiny.en", speakers=True)
    assert labelled.model_bytes > plain.model_bytes and labelled.job_bytes > plain.job_bytes


def test_prints_left_out_of_the_clustered_sample_go_to_the_nearest_speaker():
    from daemon.speakers import nearest_centre

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=16), rng.normal(size=16)
    sample = np.stack([a, a + 0.01, b, b - 0.01])
    x = np.stack([b + 0.02, a - 0.02, a, b])
    assert nearest_centre(x, sample, [3, 3, 8, 8]) == [8, 3, 3, 8]
