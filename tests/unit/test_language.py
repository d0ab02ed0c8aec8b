"""A file's language, decided once from the model's probabilities for its first speech."""

import pytest

from daemon.jobs import Checkpoint, Segment
from daemon.language import Decision, Setting, decide


def probs(**p):
    return {"en": 0.0, "de": 0.0, "ja": 0.0, "zh": 0.0, "cy": 0.0, **p}


@pytest.mark.parametrize(
    "value, setting",
    [("auto", Setting(None)), ("de", Setting("de")), (("de",), Setting("de")), (("zh", "en"), Setting(None, ("zh", "en")))],
)
def test_a_folder_language_reads_as_fixed_auto_or_a_list(value, setting):
    assert Setting.of(value) == setting


def test_fixed_needs_no_detection():
    assert decide({}, Setting("de"), 0.0) == Decision("de", "fixed")


def test_auto_takes_the_likeliest():
    d = decide(probs(de=0.9, en=0.1), Setting(None), 4.0)
    assert (d.language, d.how) == ("de", "detected") and d.probability == pytest.approx(0.9)


def test_a_list_restricts_detection_and_renormalises():
    """Japanese is likeliest, but the folder speaks Chinese or English: Chinese."""
    d = decide(probs(ja=0.6, zh=0.3, en=0.1), Setting(None, ("zh", "en")), 5.0)
    assert (d.language, d.how) == ("zh", "detected") and d.probability == pytest.approx(0.75)


def test_short_or_unclear_speech_falls_back_to_the_list_first_language_and_says_why():
    short = decide(probs(en=0.99), Setting(None, ("de", "en")), 0.5)
    assert (short.language, short.how) == ("de", "fallback") and "0.5 s" in short.reason
    unclear = decide(probs(en=0.4, de=0.35, cy=0.25), Setting(None, ("en", "de", "cy")), 8.0)
    assert (unclear.language, unclear.how) == ("en", "fallback") and "only 0.40" in unclear.reason
    auto = decide(probs(cy=0.3, en=0.25, de=0.2), Setting(None), 8.0)
    assert (auto.language, auto.how) == ("cy", "fallback") and "likeliest, cy, was kept" in auto.reason


def test_the_decision_survives_the_checkpoint():
    d = Decision("de", "fallback", 0.41, "the likeliest language, de, has a probability of only 0.41")
    cp = Checkpoint(offset=12.0, segments=(Segment(0.0, 2.0, "Hallo"),), language="de", chunks_done=1, language_detection=d)
    back = Checkpoint.from_json(cp.to_json())
    assert back == cp and back.language_detection == Decision("de", "fallback", 0.41, d.reason)
    assert Checkpoint.from_json('{"offset": 1.0, "language": "en"}').language_detection is None  # written before
