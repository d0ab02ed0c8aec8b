"""Word error rate over a whole workload: every file normalized, then scored as one corpus."""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _normalizer() -> Any:
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def corpus_wer(refs: dict[str, str], hyps: dict[str, str]) -> dict[str, Any]:
    """WER over the concatenated corpus (errors summed over files / reference words summed).

    A file with no transcript counts as all deletions, so a failed file costs
    what it should.
    """
    import jiwer

    norm = _normalizer()
    names = sorted(refs)
    ref_texts = [norm(refs[n]) for n in names]
    hyp_texts = [norm(hyps.get(n, "") or "") for n in names]
    ref_joined = " ".join(t for t in ref_texts if t.strip())
    hyp_joined = " ".join(t for t in hyp_texts if t.strip())
    if not hyp_joined.strip():
        words = len(ref_joined.split())
        return {"wer": 1.0, "ref_words": words, "substitutions": 0, "deletions": words, "insertions": 0,
                "missing_files": len([n for n in names if not hyps.get(n)])}
    out = jiwer.process_words(ref_joined, hyp_joined)
    return {
        "wer": out.wer,
        "ref_words": out.hits + out.substitutions + out.deletions,
        "substitutions": out.substitutions,
        "deletions": out.deletions,
        "insertions": out.insertions,
        "missing_files": len([n for n in names if not hyps.get(n)]),
    }
