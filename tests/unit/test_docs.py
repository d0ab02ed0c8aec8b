"""The README stays a user's page, and every bench sitting says when, where and on which code."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_stays_short_enough_to_read():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, "README.md is for users: move history to bench/results/ and internals to docs/"


def test_each_sitting_names_its_machine_and_code_and_the_index_lists_it():
    index = (ROOT / "bench" / "README.md").read_text()
    sittings = sorted((ROOT / "bench" / "results").glob("*.md"))
    assert sittings
    for path in sittings:
        text = path.read_text()
        assert text.startswith("# Sitting"), path.name
        assert re.search(r"^- Machine: .+", text, re.M), path.name
        assert re.search(r"^- Code: .*[0-9a-f]{7}", text, re.M), path.name
        assert f"(results/{path.name})" in index, f"{path.name} is missing from bench/README.md's index"
