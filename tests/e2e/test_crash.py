"""Nothing lost, nothing twice, nothing failed: the real daemon, at its default settings, killed
with SIGKILL at random moments (the whole of it, restarted each time; or its worker alone)."""

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time

import psutil
import pytest

from tests import speech
from tests.conftest import make_tree
from tests.e2e.helpers import status, wait_for

KILLS = 4  # in the suite, of each kind; the twelve and hundreds are under -m slow


def default_config(tree):
    """The tree's configuration with the default batch size (the suite's trees use 8)."""
    tree.config.write_text(tree.config.read_text().replace("  batch_size: 8\n", ""))
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


class Output:
    """A daemon's output, read line by line as it comes."""

    def __init__(self, proc):
        self.lines: list[str] = []
        self.closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        with stream:
            for line in stream:
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait(self, action, *, after=0, timeout=600, saying=""):
        """The index of the first line at or after ``after`` with this log action (and saying
        ``saying``); None if the daemon ended first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for n in range(after, len(self.lines)):
                    if f"action={action} " in self.lines[n] and saying in self.lines[n]:
                        return n
                after = len(self.lines)
                if self.closed:
                    return None
                left = deadline - time.monotonic()
                assert left > 0, f"no {action} in {timeout} s:\n{''.join(self.lines[-30:])}"
                self._cond.wait(left)

    def text(self):
        self._thread.join(60)
        return "".join(self.lines)


COPIES = 1  # in the suite: the clips once make a 3.5-minute recording, which shares one batch with the memos


class Calm:
    """The inputs transcribed without a kill: what every killed run must end with, how fast the
    daemon works, and how long its first batch (in the suite, all of the work) takes."""

    def __init__(self, root, model_cache, copies):
        tree = default_config(make_tree(root, model_cache))
        self.copies = copies
        self.originals, self.durations = inputs(tree, copies)
        began = time.monotonic()
        proc = tree.popen("run", "--drain")
        out = Output(proc)
        first = out.wait("job.start")
        held_from = time.monotonic()
        assert out.wait("job.done", after=first) is not None
        self.batch_seconds = time.monotonic() - held_from  # from the first file opened to the first finished
        assert proc.wait(timeout=4 * 3600) == 0, out.text()[-3000:]
        self.seconds = time.monotonic() - began
        self.speed = sum(self.durations.values()) / self.seconds  # audio seconds per second, start-up included
        self.expected = content(tree)
        assert len(self.expected) == 4 * len(self.originals)


@pytest.fixture(scope="module")
def calm(tmp_path_factory, model_cache):
    return Calm(tmp_path_factory.mktemp("calm"), model_cache, COPIES)


@pytest.fixture(scope="module")
def calm_long(tmp_path_factory, model_cache):
    return Calm(tmp_path_factory.mktemp("calm-long"), model_cache, 4)  # about 10 minutes of audio: two batches


# In the suite, each kill lands at a random moment while the worker holds files (after it opened one,
# before the first batch would end, and paced by the work left), so that every kill finds files being
# transcribed: with a strike for each, three kills would send every file to failed/. The twelve kills land at random
# moments of the whole run, start-up included, paced by the work left.


@pytest.mark.timeout(900)
def test_kills_of_the_whole_daemon_in_its_batches_lose_nothing_fail_nothing_and_duplicate_nothing(tmp_path, model_cache, calm):
    kill_group(tmp_path, model_cache, calm, kills=KILLS, seed=20261124, in_batch=True)


@pytest.mark.timeout(900)
def test_kills_of_the_worker_alone_in_its_batches_lose_nothing_fail_nothing_and_duplicate_nothing(tmp_path, model_cache, calm):
    kill_workers(tmp_path, model_cache, calm, kills=KILLS, seed=20261207, in_batch=True)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_twelve_kills_of_the_whole_daemon(tmp_path, model_cache, calm_long, seed):
    kill_group(tmp_path, model_cache, calm_long, kills=12, seed=seed)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_twelve_kills_of_the_worker(tmp_path, model_cache, calm_long, seed):
    kill_workers(tmp_path, model_cache, calm_long, kills=12, seed=seed)


@pytest.mark.slow
@pytest.mark.timeout(6 * 3600)
def test_hundreds_of_kills_over_a_two_hour_recording(tmp_path, model_cache):
    calm = Calm(tmp_path / "calm", model_cache, 55)
    kill_group(tmp_path, model_cache, calm, kills=300, seed=7)


def pause(rng, tree, calm, kills_left):
    """How long to let a run (or a worker) live before the next kill. Kills are paced by the work
    left, so that all of them land before the work is done however fast this machine is: on
    average a run lives as long as its share of the remaining work would take, at most 8 s; with
    little left, runs die during start-up (0.1-0.5 s)."""
    share = audio_left(tree, calm.durations) / calm.speed / kills_left
    longest = min(8.0, max(0.5, 1.6 * share))
    return rng.uniform(0.25, 1.0) * longest  # during start-up, decoding, writing or moving


def moment(rng, tree, calm, kills_left, out, after, in_batch):
    """Seconds from now to the next kill, or None when the daemon ended first."""
    if not in_batch:
        return pause(rng, tree, calm, kills_left)
    if out.wait("job.start", after=after) is None:
        return None
    # a share of the work left for one more kill than are left, so that the last lands before the end
    return rng.uniform(0.05, 0.8) * min(calm.batch_seconds, audio_left(tree, calm.durations) / calm.speed / (kills_left + 1))


def killed_tree(tmp_path, model_cache, calm):
    tree = default_config(make_tree(tmp_path / "killed", model_cache))
    assert inputs(tree, calm.copies) == (calm.originals, calm.durations)
    return tree


def kill_group(tmp_path, model_cache, calm, *, kills, seed, in_batch=False):
    """The whole daemon, worker included, killed at once (its process group, as a power cut or a
    force quit ends it), and started again each time."""
    tree = killed_tree(tmp_path, model_cache, calm)
    rng = random.Random(seed)
    done = 0
    resumed_at = []
    runs = 0
    while done < kills and runs < 10 * kills:
        runs += 1
        proc = tree.popen("run", "--drain", start_new_session=True)
        out = Output(proc)
        delay = moment(rng, tree, calm, kills - done, out, 0, in_batch)
        try:
            if delay is not None:
                proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            done += 1
        proc.wait(timeout=600)
        resumed_at += [float(x) for x in re.findall(r"resuming at (\d+) s", out.text())]
        if delay is None:
            break  # no batch was left to kill
    finish_and_check(tree, calm)
    assert done >= kills, f"the work was done after {done} kills"
    if calm.copies >= 20:  # many batches: kills between them leave checkpoints inside it
        assert resumed_at, "no run resumed inside the long recording"


def kill_workers(tmp_path, model_cache, calm, *, kills, seed, in_batch=False):
    """One daemon; its worker killed at random moments (as the out-of-memory killer would), each
    time after the daemon started a new one."""
    tree = killed_tree(tmp_path, model_cache, calm)
    rng = random.Random(seed)
    done = 0
    proc = tree.popen("run", "--drain", start_new_session=True)
    out = Output(proc)
    daemon = psutil.Process(proc.pid)
    try:
        seen: set[int] = set()
        while done < kills:
            worker = wait_for(lambda: new_worker(daemon, seen) or proc.poll() is not None, timeout=120, every=0.05,
                              what="a worker")
            if worker is True:
                break  # the work is done
            seen.add(worker.pid)
            began = out.wait("worker.start", saying=f"(pid {worker.pid})")
            delay = None if began is None else moment(rng, tree, calm, kills - done, out, began, in_batch)
            if delay is None:
                break
            time.sleep(delay)  # the kill's random moment, not a wait for a state
            try:
                worker.send_signal(signal.SIGKILL)
                done += 1
            except psutil.NoSuchProcess:
                pass
        proc.wait(timeout=3600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = out.text()
    assert proc.returncode == 0, text[-3000:]
    finish_and_check(tree, calm, text)
    assert done >= kills, f"the work was done after {done} kills:\n{text[-6000:]}"


def new_worker(daemon, seen):
    """The daemon's worker process, if one is running that was not seen before."""
    try:
        for child in daemon.children():
            if child.pid not in seen and "resource_tracker" not in " ".join(child.cmdline()):
                return child
    except psutil.NoSuchProcess:
        pass
    return None


def finish_and_check(tree, calm, log=""):
    final = tree.run("run", "--drain", timeout=4 * 3600)
    assert final.returncode == 0, final.stderr
    check_invariants(tree, calm.originals)
    failed = {p.name: p.read_text() for p in tree.failed.rglob("*.error.txt")}
    assert tree.files(tree.failed) == [], (failed, log[-5000:])
    got = content(tree)
    differ = sorted(k for k in set(got) | set(calm.expected) if got.get(k) != calm.expected.get(k))
    assert not differ, [(k, calm.expected.get(k), got.get(k)) for k in differ[:2]]
