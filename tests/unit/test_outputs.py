"""What lands on disk from a transcript, through whisper's own writers: the Chinese script
(OpenCC) in every format, and subtitles cut for reading."""

import json
import re

import pytest

from daemon import outputs
from daemon.jobs import Segment, Word
from tests import speech

FORMATS = ("txt", "srt", "vtt", "json")
CUE = re.compile(r"(\d\d:)?(\d\d):(\d\d)[,.](\d\d\d) --> (\d\d:)?(\d\d):(\d\d)[,.](\d\d\d)\n(.*?)\n\n", re.S)


def transcript(segments, language="en", duration=None, task="transcribe"):
    return outputs.Transcript(
        source="memo.m4a", segments=tuple(segments), language=language, duration=duration, model="tiny.en",
        engine="openai-whisper", device="cpu", precision="fp32", processing_seconds=1.0, task=task,
    )


def write_all(tmp_path, t, style=outputs.Style()):
    tmp_path.mkdir(exist_ok=True)
    paths = outputs.choose_paths(tmp_path, "memo", FORMATS)
    outputs.write(t, paths, style=style)
    return {p.suffix[1:]: p.read_text(encoding="utf-8") for p in paths}


def cues(text):
    """(start, end, lines) of every cue of an SRT or VTT file."""
    out = []
    for m in CUE.finditer(text):
        g = m.groups()
        start = int(g[0][:2] if g[0] else 0) * 3600 + int(g[1]) * 60 + int(g[2]) + int(g[3]) / 1000
        end = int(g[4][:2] if g[4] else 0) * 3600 + int(g[5]) * 60 + int(g[6]) + int(g[7]) / 1000
        out.append((start, end, g[8].split("\n")))
    return out


def chars(words):
    return [Word(c, 0.5 * i, 0.5 * i + 0.4, 0.9) for i, c in enumerate(words)]


# --------------------------------------------------------------------------- Chinese script

TRADITIONAL = "我們開會討論了軟件開發的進度，這個專案會在下個月發佈。"
SIMPLIFIED = "我们开会讨论了软件开发的进度，这个专案会在下个月发布。"
ONLY_TRADITIONAL = set("們開會討論發進這個專佈")  # characters that exist in traditional script only


def zh_transcript(text):
    words = chars(text)  # whisper times Chinese words a character or two at a time
    return transcript([Segment(0.0, words[-1].end, text, tuple(words))], language="zh", duration=40.0)


def test_simplified_converts_every_format_and_the_word_timings(tmp_path):
    out = write_all(tmp_path, zh_transcript(TRADITIONAL), outputs.Style(chinese="simplified"))
    doc = json.loads(out["json"])
    assert doc["text"] == doc["segments"][0]["text"] == out["txt"].strip()
    assert "".join(w["word"] for w in doc["segments"][0]["words"]) == doc["text"]
    for fmt, text in out.items():
        text = json.loads(text)["text"] if fmt == "json" else text
        assert not ONLY_TRADITIONAL & set(text), (fmt, text)
        assert "开会讨论" in text and "进度" in text, (fmt, text)
    subtitles = "".join("".join(lines) for _, _, lines in cues(out["srt"]))
    assert subtitles == out["txt"].strip()


def test_traditional_converts_simplified_text_and_as_is_leaves_both_scripts(tmp_path):
    mixed = transcript([Segment(0.0, 5.0, SIMPLIFIED), Segment(5.0, 9.0, "這個專案")], language="zh", duration=9.0)
    out = write_all(tmp_path / "t", mixed, outputs.Style(chinese="traditional"))
    assert out["txt"].split() == ["我們開會討論了軟件開發的進度，這個專案會在下個月發佈。", "這個專案"]
    assert ONLY_TRADITIONAL <= set(out["txt"])
    kept = write_all(tmp_path / "a", mixed, outputs.Style(chinese="as-is"))
    assert kept["txt"].split() == [SIMPLIFIED, "這個專案"]


@pytest.mark.parametrize("language, text", [("ja", "會議の議題は開発です"), ("en", "The 開發 team met.")])
def test_only_chinese_transcripts_are_converted(tmp_path, language, text):
    """Japanese kanji are not Chinese script to convert, nor is a Chinese word in an English transcript."""
    out = write_all(tmp_path, transcript([Segment(0.0, 4.0, text)], language=language), outputs.Style(chinese="simplified"))
    assert out["txt"].strip() == text


# --------------------------------------------------------------------------- subtitle lines

def long_segments(with_words):
    """Real sentences (the LibriSpeech references), two segments with a pause between."""
    refs = [speech.manifest()[n].lower() for n in ("ls_1272-128104-0004-8k.wav", "ls_1221-135766-0001.wav")]
    segs, t = [], 1.0
    for text in refs:
        n = len(text.split())
        words = tuple(Word(" " + w, t + 0.3 * i, t + 0.3 * i + 0.25, 0.9) for i, w in enumerate(text.split())) if with_words else ()
        segs.append(Segment(t, t + 0.3 * n, text, words))
        t += 0.3 * n + 4.0
    return segs, " ".join(refs)


@pytest.mark.parametrize("with_words", [True, False])
@pytest.mark.parametrize("width, count", [(None, 2), (30, 1), (20, 3)])
def test_subtitle_lines_keep_to_the_width_and_count(tmp_path, with_words, width, count):
    segs, text = long_segments(with_words)
    duration = segs[-1].end + 1
    out = write_all(tmp_path, transcript(segs, duration=duration), outputs.Style(max_line_width=width, max_line_count=count))
    limit = width or outputs.LINE_WIDTH
    for fmt in ("srt", "vtt"):
        found = cues(out[fmt])
        assert len(found) > 4
        for start, end, lines in found:
            assert 1 <= len(lines) <= count, lines
            assert all(len(line) <= limit or " " not in line for line in lines), lines
        # nothing lost or reordered, and every cue inside the audio, none before the one before
        assert " ".join(line for _, _, lines in found for line in lines).split() == text.split()
        assert all(0 <= a <= b <= duration for a, b, _ in found)
        assert all(b1 <= a2 for (_, b1, _), (a2, _, _) in zip(found, found[1:]))
    # a pause of four seconds starts a new cue (the writers' own rule): the second segment's first word opens one
    first_of_second = segs[1].text.split()[0]
    assert any(lines[0].split()[0] == first_of_second for _, _, lines in cues(out["srt"]))


def test_chinese_and_japanese_lines_hold_sixteen_characters(tmp_path):
    text = "我们开会讨论了软件开发的进度这个专案会在下个月发布所以大家要准备好所有的文件和测试报告"
    for with_words in (True, False):
        seg = Segment(0.0, 20.0, text, tuple(chars(text)) if with_words else ())
        out = write_all(tmp_path / str(with_words), transcript([seg], language="zh", duration=30.0))
        found = cues(out["srt"])
        lines = [line for _, _, ls in found for line in ls]
        assert "".join(lines) == text
        assert max(len(line) for line in lines) == outputs.LINE_WIDTH_UNSPACED
        assert all(len(ls) <= 2 for _, _, ls in found)


def test_no_cue_runs_past_the_audio_or_back_before_the_last_one(tmp_path):
    """Whisper's times may overshoot the end of the audio, and words of neighbouring segments overlap."""
    segs = [
        Segment(0.0, 3.0, "first part here", (Word(" first", 0.0, 1.0, 0.9), Word(" part", 1.0, 2.5, 0.9), Word(" here", 2.5, 3.2, 0.9))),
        Segment(2.8, 6.5, "and the end", (Word(" and", 2.8, 3.5, 0.9), Word(" the", 3.5, 4.0, 0.9), Word(" end", 4.0, 6.5, 0.9))),
    ]
    out = write_all(tmp_path, transcript(segs, duration=5.0), outputs.Style(max_line_width=12, max_line_count=1))
    for fmt in ("srt", "vtt"):
        found = cues(out[fmt])
        assert [" ".join(ls) for _, _, ls in found] == ["first part", "here and the", "end"]
        assert all(0 <= a <= b <= 5.0 for a, b, _ in found)
        assert all(b1 <= a2 for (_, b1, _), (a2, _, _) in zip(found, found[1:]))
    # the JSON keeps what the model said
    assert json.loads(out["json"])["segments"][1]["words"][-1]["end"] == 6.5


def test_highlighted_words_are_underlined_one_cue_each(tmp_path):
    seg = Segment(0.0, 1.5, "one two three", (Word(" one", 0.0, 0.5, 0.9), Word(" two", 0.5, 1.0, 0.9), Word(" three", 1.0, 1.5, 0.9)))
    out = write_all(tmp_path, transcript([seg], duration=2.0), outputs.Style(highlight_words=True))
    assert [ls[0] for _, _, ls in cues(out["vtt"])] == ["<u>one</u> two three", "one <u>two</u> three", "one two <u>three</u>"]


def test_json_carries_task_language_and_words_only_when_timed(tmp_path):
    timed = Segment(0.0, 1.0, "hello there", (Word(" hello", 0.0, 0.4, 0.91234), Word(" there", 0.5, 1.0, 0.8)))
    out = write_all(tmp_path / "a", transcript([timed, Segment(1.0, 2.0, "bye")], language="de", task="translate"))
    doc = json.loads(out["json"])
    assert (doc["task"], doc["language"]) == ("translate", "de")
    assert doc["segments"][0]["words"] == [
        {"word": " hello", "start": 0.0, "end": 0.4, "probability": 0.9123},
        {"word": " there", "start": 0.5, "end": 1.0, "probability": 0.8},
    ]
    assert "words" not in doc["segments"][1]
