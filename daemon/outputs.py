"""Rendering transcripts and writing them atomically under collision-free names.

The text formats come from the writers openai-whisper ships in
``whisper.utils``; each renders into memory and the bytes are published with
temp + link, so Finder never shows half a file and nothing is overwritten.

Before rendering, a Chinese transcript's script is converted as the folder asks
(OpenCC), in every format alike. Subtitles are cut for reading with the writers'
own options (``max_line_width``, ``max_line_count``, ``highlight_words``), which
work on word timings: a segment without them (``words: false``) gives the writers
its words with the segment's time spread over them by length, so the lines are
wrapped the same way and only the cues' times inside a segment are estimates.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from daemon import files
from daemon.jobs import Segment, Word

LINE_WIDTH = 42  # subtitle characters a line, the usual limit for reading
LINE_WIDTH_UNSPACED = 16  # for the languages written without spaces between words
UNSPACED = ("zh", "yue", "ja")  # whose subtitle lines are counted in characters, each one a "word"
CHINESE = ("zh", "yue")  # the transcripts whose script ``chinese`` converts
_OPENCC = {"simplified": "t2s", "traditional": "s2t"}  # OpenCC's configurations for ``chinese``


@dataclass(frozen=True)
class Style:
    """How a folder wants its outputs written (FolderConfig's output keys)."""

    chinese: str = "as-is"  # as-is | simplified | traditional
    max_line_width: int | None = None  # None: LINE_WIDTH, or LINE_WIDTH_UNSPACED for UNSPACED languages
    max_line_count: int = 2
    highlight_words: bool = False

    def line_width(self, language: str | None) -> int:
        if self.max_line_width is not None:
            return self.max_line_width
        return LINE_WIDTH_UNSPACED if language in UNSPACED else LINE_WIDTH


def _writers() -> dict[str, Any]:
    """whisper.utils imports torch, so it is imported on first use: a worker reads and cuts
    its first files while another thread loads torch and the model."""
    from daemon.engines.whisper_lib import import_whisper

    import_whisper()
    from whisper.utils import WriteJSON, WriteSRT, WriteTXT, WriteVTT

    return {"txt": WriteTXT, "srt": WriteSRT, "vtt": WriteVTT, "json": WriteJSON}


def _speaker_writers() -> dict[str, Any]:
    """The writers for a transcript whose segments say who spoke (``speakers``). txt: one
    paragraph a turn, "Speaker 1: …". Subtitles: whisper's own cues, cut within each turn (so
    no cue holds two speakers); SRT names the speaker on the first cue of each turn, VTT gives
    every cue its voice tag (``<v Speaker 1>``), which players may show or style."""
    writers = _writers()

    class TurnsTXT(writers["txt"]):  # type: ignore[misc, valid-type]
        def write_result(self, result: dict[str, Any], file: Any, options: Any = None, **kwargs: Any) -> None:
            for turn in _turns(result["segments"]):
                text = " ".join(s["text"].strip() for s in turn if s["text"].strip())
                print(f"{turn[0].get('speaker')}: {text}\n", file=file, flush=True)

    def by_turn(base: Any, tag: Any) -> Any:
        class TurnsSubtitles(base):  # type: ignore[misc, valid-type]
            def iterate_result(self, result: dict[str, Any], options: Any = None, **kwargs: Any) -> Any:
                for turn in _turns(result["segments"]):
                    cues = super().iterate_result({**result, "segments": turn}, options, **kwargs)
                    for i, (start, end, text) in enumerate(cues):
                        yield start, end, tag(turn[0].get("speaker"), i, text)

        return TurnsSubtitles

    return {
        "txt": TurnsTXT,
        "srt": by_turn(writers["srt"], lambda who, i, text: f"{who}: {text}" if i == 0 else text),
        "vtt": by_turn(writers["vtt"], lambda who, i, text: f"<v {who}>{text}"),
        "json": writers["json"],
    }


def _turns(segments: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = []
    for seg in segments:
        if out and out[-1][0].get("speaker") == seg.get("speaker"):
            out[-1].append(seg)
        else:
            out.append([seg])
    return out


@dataclass(frozen=True)
class Transcript:
    source: str  # the original's file name
    segments: tuple[Segment, ...]
    language: str | None
    duration: float | None
    model: str
    engine: str
    device: str
    precision: str
    processing_seconds: float
    task: str = "transcribe"
    # how ``language`` was decided: {"language", "how": fixed | detected | fallback, "probability", "reason"}
    language_detection: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


def to_result(t: Transcript) -> dict[str, Any]:
    """The dict shape whisper.utils writers expect, plus what whisperd knows about the run."""
    return {
        "source": t.source,
        "text": t.text,
        "language": t.language,
        **({"language_detection": t.language_detection} if t.language_detection else {}),
        "task": t.task,
        "duration": None if t.duration is None else round(t.duration, 3),
        "model": t.model,
        "engine": t.engine,
        "device": t.device,
        "precision": t.precision,
        "processing_seconds": round(t.processing_seconds, 3),
        "segments": [
            {"id": i, **s.to_dict()} for i, s in enumerate(t.segments) if s.text.strip()
        ],
    }


def subtitle_result(t: Transcript) -> dict[str, Any]:
    """``to_result`` with words on every segment, for the subtitle writers: a segment's own
    word timings, or its words with its time spread over them by length. Word times are held
    inside the audio and never run backwards, so no cue ends past the audio or starts before
    the previous one ends."""
    result = to_result(t)
    limit = t.duration if t.duration is not None else math.inf
    floor = 0.0
    segments = []
    for seg in (s for s in t.segments if s.text.strip()):
        words = []
        for w in seg.words or spread_words(seg, t.language):
            start = min(max(w.start, floor), limit)
            end = min(max(w.end, start), limit)
            floor = end
            words.append({"word": w.word.replace("-->", "->"), "start": start, "end": end, "probability": w.probability})
        segments.append({"start": words[0]["start"], "end": words[-1]["end"], "text": seg.text, "words": words,
                         **({"speaker": seg.speaker} if seg.speaker else {})})
    result["segments"] = segments
    return result


_SPACED_WORD = re.compile(r"\S+")


def spread_words(seg: Segment, language: str | None) -> list[Word]:
    """A segment's words, timed by sharing its span out by their lengths: what the subtitle
    writers wrap when whisper's alignment did not time the words. Characters are the words of
    the languages written without spaces; elsewhere each word keeps a leading space, as
    whisper's own words do."""
    text = seg.text.strip()
    if language in UNSPACED:
        pieces = [ch for ch in text if not ch.isspace()]
    else:
        pieces = [" " + w for w in _SPACED_WORD.findall(text)]
    total = sum(len(p.strip()) for p in pieces) or 1
    span = max(0.0, seg.end - seg.start)
    words, done = [], 0
    for p in pieces:
        start = seg.start + span * done / total
        done += len(p.strip())
        words.append(Word(p, round(start, 3), round(seg.start + span * done / total, 3), 1.0))
    return words


@functools.lru_cache(maxsize=None)
def _converter(config: str) -> Any:
    import opencc

    return opencc.OpenCC(config)


def convert_script(t: Transcript, chinese: str) -> Transcript:
    """A Chinese transcript (``zh``, ``yue``) in the script ``chinese`` asks for, words and all;
    any other transcript, or ``as-is``, unchanged. Whisper writes Mandarin in either script,
    sometimes both in one file. Each segment is converted whole (OpenCC picks characters by
    the phrase they are in) and its words cut from the result where the conversion kept the
    text's length, as it nearly always does; otherwise each word is converted alone."""
    if chinese not in _OPENCC or t.language not in CHINESE:
        return t
    convert = _converter(_OPENCC[chinese]).convert
    segments = []
    for seg in t.segments:
        text = convert(seg.text)
        words = seg.words
        if words:
            joined = "".join(w.word for w in words)
            whole = convert(joined)
            if len(whole) == len(joined):
                cuts, at = [], 0
                for w in words:
                    cuts.append(whole[at : at + len(w.word)])
                    at += len(w.word)
            else:
                cuts = [convert(w.word) for w in words]
            words = tuple(dataclasses.replace(w, word=c) for w, c in zip(words, cuts))
        segments.append(dataclasses.replace(seg, text=text, words=words))
    return dataclasses.replace(t, segments=tuple(segments))


def render(t: Transcript, fmt: str, style: Style = Style()) -> bytes:
    """One format of ``t``, written by whisper's own writer; subtitles cut by ``style``."""
    t = convert_script(t, style.chinese)
    buf = io.StringIO()
    writers = _speaker_writers() if any(s.speaker for s in t.segments) else _writers()
    writer = writers[fmt](output_dir=".")
    if fmt in ("srt", "vtt"):
        writer.write_result(
            subtitle_result(t), file=buf, max_line_width=style.line_width(t.language),
            max_line_count=style.max_line_count, highlight_words=style.highlight_words,
        )
    else:
        writer.write_result(to_result(t), file=buf)
    return buf.getvalue().encode("utf-8")


def choose_paths(out_dir: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    """One free stem shared by every format: ``meeting.txt``/``.srt``… or ``meeting (2).txt``/…"""
    suffixes = [f".{f}" for f in formats]
    free = files.free_stem(out_dir, stem, suffixes)
    return [out_dir / (free + s) for s in suffixes]


def write(t: Transcript, paths: Sequence[Path], *, ours: bool = False, style: Style = Style()) -> list[Path]:
    """Write each format to its path. ``ours``: the names were chosen by an earlier try
    of this same job, so a file already there is that try's and may be replaced."""
    written = []
    for path in paths:
        fmt = path.suffix.lstrip(".")
        data = render(t, fmt, style)
        try:
            written.append(files.write_atomic(path.parent, path.name, data))
        except FileExistsError:
            if not ours:
                raise
            written.append(files.write_atomic(path.parent, path.name, data, replace=True))
    return written
