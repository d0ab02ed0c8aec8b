"""Nothing lost, nothing twice: the real daemon killed with SIGKILL at random moments, restarted each time."""

import hashlib
import json
import random
import re
import shutil
import signal
import subprocess
import time

import pytest

from tests import speech
from tests.conftest import make_tree
from tests.e2e.helpers import status

KILLS = 20
# Small batches, so a checkpoint lands every second or so and kills fall between, inside and after them.
# Kills are not the files' fault: max_attempts is raised so that a run of kills during start-up cannot
# fail a file (the strike rule for files that crash the daemon is tested on its own).
KILL_CONFIG = """
jobs:
  max_attempts: 100
"""


def small_batches(tree):
    tree.config.write_text(tree.config.read_text().replace("batch_size: 8", "batch_size: 2"))
    return tree


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def inputs(tree, copies=6):
    """A long recording of several speakers and a handful of short memos, some in subfolders.
    Returns each file's digest and its audio duration in seconds."""
    long_audio, _ = speech.concat(speech.clips() * copies, gap=0.7)  # 6 copies: about 14 minutes
    speech.write(tree.inbox / "lecture.m4a", long_audio)
    durations = {"lecture.m4a": len(long_audio) / speech.SR}
    (tree.inbox / "memos").mkdir()
    for name in speech.clips()[:5]:
        shutil.copy(speech.DATA / name, tree.inbox / "memos" / name)
        durations[f"memos/{name}"] = len(speech.read(name)) / speech.SR
    digests = {p.relative_to(tree.inbox).as_posix(): digest(p) for p in tree.inbox.rglob("*") if p.is_file()}
    return digests, durations


def audio_left(tree, durations):
    """Seconds of audio not transcribed yet, from what the daemon's status says."""
    jobs = {j["name"]: j for j in status(tree)["jobs"]}
    left = 0.0
    for name, seconds in durations.items():
        job = jobs.get(name)
        if job is None or job["state"] not in ("done", "failed"):
            left += seconds * (1.0 - (job["progress"] if job else 0.0))
    return left


def content(tree):
    """What the outputs say, without the timing fields that differ between runs."""
    out = {}
    for p in sorted(tree.outbox.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(tree.outbox).as_posix()
        if p.suffix == ".json":
            doc = json.loads(p.read_text())  # a half-written file would not parse
            out[rel] = (doc["text"], doc["segments"])
        else:
            out[rel] = p.read_text()
    return out


def check_invariants(tree, originals):
    # every original exactly once, byte for byte, in its inbox, archive or failed folder
    seen = {}
    for where in (tree.inbox, tree.archive, tree.failed):
        for p in where.rglob("*"):
            if p.is_file() and not p.name.endswith((".error.txt", ".duplicate.txt")):
                seen.setdefault(p.relative_to(where).as_posix(), []).append(digest(p))
    assert {k: v for k, v in seen.items()} == {k: [v] for k, v in originals.items()}
    # every finished job's outputs exactly once; no temporary files left under any name
    for where in (tree.outbox, tree.archive, tree.failed, tree.inbox):
        names = [p.name for p in where.rglob("*") if p.is_file()]
        assert not [n for n in names if n.startswith(".whisperd-")], names
        assert not [n for n in names if " (2)" in n], names


@pytest.mark.timeout(900)
def test_twenty_kills_at_random_moments_lose_nothing_and_duplicate_nothing(tmp_path, model_cache):
    kill_and_check(tmp_path, model_cache, kills=KILLS, copies=4, seed=20261124)


@pytest.mark.slow
@pytest.mark.timeout(6 * 3600)
def test_hundreds_of_kills_over_a_two_hour_recording(tmp_path, model_cache):
    kill_and_check(tmp_path, model_cache, kills=300, copies=55, seed=7)


def kill_and_check(tmp_path, model_cache, *, kills, copies, seed):
    calm = small_batches(make_tree(tmp_path / "calm", model_cache))
    originals, durations = inputs(calm, copies)
    began = time.monotonic()
    assert calm.run("run", "--drain", timeout=4 * 3600).returncode == 0
    speed = sum(durations.values()) / (time.monotonic() - began)  # audio seconds per second, start-up included
    expected = content(calm)
    assert len(expected) == 4 * len(originals)

    tree = small_batches(make_tree(tmp_path / "killed", model_cache, KILL_CONFIG))
    assert inputs(tree, copies) == (originals, durations)
    rng = random.Random(seed)
    wanted = kills
    kills = 0
    resumed_at = []
    runs = 0
    while kills < wanted and runs < 10 * wanted:
        runs += 1
        # Kills are paced by the work left, so that all of them land before the work is done however
        # fast this machine is: on average a run lives as long as its share of the remaining work
        # would take, at most 8 s; with little left, runs die during start-up (0.1-0.5 s).
        share = audio_left(tree, durations) / speed / (wanted - kills)
        longest = min(8.0, max(0.5, 1.6 * share))
        proc = tree.popen("run", "--drain")
        try:
            proc.wait(timeout=rng.uniform(0.25, 1.0) * longest)  # during start-up, decoding, writing or moving
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        out, _ = proc.communicate()
        resumed_at += [float(x) for x in re.findall(r"resuming at (\d+) s", out)]
    assert kills >= wanted
    final = tree.run("run", "--drain", timeout=4 * 3600)
    assert final.returncode == 0, final.stderr
    check_invariants(tree, originals)
    assert tree.files(tree.failed) == []
    assert content(tree) == expected
    assert resumed_at, "no run resumed inside the long recording"
