"""Deciding a file's language once, from the model's probabilities for its first speech.

A folder's ``language`` is ``auto``, one language (``de``), or a list to choose among
(``[zh, en]``). A fixed language needs no detection. Otherwise the language is detected
once per file, from its first speech (its first chunk: VAD has already left leading
silence and music out), and every chunk is then transcribed in it, so that batches and
fit windows work as for a fixed language. Speech too short or unclear to decide falls
back to the list's first language (with ``auto``, the likeliest one is kept), and the
transcript's JSON says so. No I/O here.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

# Below these, the model's choice is not trusted: under a second of speech is a guess, and a
# likeliest language under even odds is no decision. Detection from the first chunk is as right as
# stock transcribe()'s from the first 30 s (base on espeak-ng speech in seven languages and
# LibriSpeech English: bench/results/2026-12-07-1500-epyc-base.md).
MIN_SPEECH_SECONDS = 1.0
MIN_PROBABILITY = 0.5


@lru_cache(maxsize=1)
def whisper_languages() -> dict[str, str]:
    """openai-whisper's languages, code -> English name, read from its ``tokenizer.py`` without
    importing whisper (whose package loads torch): the config is read by commands that never need
    the model. Empty when whisper is not installed or its file reads otherwise."""
    try:
        spec = importlib.util.find_spec("whisper")
        if spec is None or not spec.submodule_search_locations:
            return {}
        source = (Path(list(spec.submodule_search_locations)[0]) / "tokenizer.py").read_text(encoding="utf-8")
        for node in ast.parse(source).body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "LANGUAGES" for t in node.targets):
                table = ast.literal_eval(node.value)
                return {str(k): str(v) for k, v in table.items()}
    except (ImportError, OSError, SyntaxError, ValueError):
        pass
    return {}


def code_of(value: str) -> str | None:
    """The language code for a code or an English name Whisper knows (``de``, ``German``), or None.
    Anything passes when Whisper's table cannot be read (the model will judge)."""
    value = value.strip().lower()
    table = whisper_languages()
    if not table:
        return value
    if value in table:
        return value
    return next((code for code, name in table.items() if name == value), None)


@dataclass(frozen=True)
class Setting:
    """A folder's ``language``, read: ``fixed`` when it names one language, else the
    languages to choose among (``among``; empty for ``auto``: any)."""

    fixed: str | None
    among: tuple[str, ...] = ()

    @classmethod
    def of(cls, value: str | tuple[str, ...]) -> "Setting":
        if isinstance(value, str):
            return cls(None) if value == "auto" else cls(value)
        if len(value) == 1:
            return cls(value[0])
        return cls(None, tuple(value))

    @property
    def fallback(self) -> str | None:
        return self.among[0] if self.among else None


@dataclass(frozen=True)
class Decision:
    """How a file's language was decided: ``fixed`` (by its folder), ``detected``, or
    ``fallback`` (speech too short or unclear: ``reason`` says which)."""

    language: str
    how: str
    probability: float | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"language": self.language, "how": self.how}
        if self.probability is not None:
            d["probability"] = round(self.probability, 3)
        if self.reason:
            d["reason"] = self.reason
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "Decision | None":
        if not d or not d.get("language"):
            return None
        p = d.get("probability")
        return cls(str(d["language"]), str(d.get("how", "detected")), None if p is None else float(p), d.get("reason"))


def decide(probabilities: Mapping[str, float], setting: Setting, speech_seconds: float) -> Decision:
    """The file's language from the model's ``probabilities`` (language code → probability)
    for ``speech_seconds`` of its first speech, restricted to ``setting.among`` if given."""
    if setting.fixed is not None:
        return Decision(setting.fixed, "fixed")
    pool = {code: p for code, p in probabilities.items() if not setting.among or code in setting.among}
    total = sum(pool.values())
    if not pool or total <= 0:
        return _fall_back(setting, probabilities, None, "the model gave none of the folder's languages a chance")
    best = max(pool, key=pool.__getitem__)
    p = pool[best] / total
    if speech_seconds < MIN_SPEECH_SECONDS:
        return _fall_back(setting, pool, p, f"the first speech is only {speech_seconds:.1f} s long")
    if p < MIN_PROBABILITY:
        return _fall_back(setting, pool, p, f"the likeliest language, {best}, has a probability of only {p:.2f}")
    return Decision(best, "detected", p)


def _fall_back(setting: Setting, pool: Mapping[str, float], p: float | None, reason: str) -> Decision:
    if setting.fallback is not None:
        return Decision(setting.fallback, "fallback", None, reason + f"; the folder's first language, {setting.fallback}, was used")
    best = max(pool, key=pool.__getitem__) if pool else "en"
    return Decision(best, "fallback", p, reason + f"; the likeliest, {best}, was kept")
