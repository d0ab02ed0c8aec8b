"""A file that crashes the worker every time fails alone, with its reason; the files that shared
its batch are transcribed. The crash is real (the worker's process aborts, as a decoder's segfault
would end it); it comes from the fake engine's fault seam (``model.fake_crash_on``), the one way to
have a file kill the worker on demand."""

import json
import shutil

import pytest

from daemon.engines.fake import chunk_text
from tests import speech
from tests.conftest import make_tree
from tests.e2e.helpers import status

GOOD = speech.clips()[:5]
POISON = "poison.flac"


@pytest.fixture(scope="module")
def ran(tmp_path_factory, model_cache):
    tree = make_tree(tmp_path_factory.mktemp("poison"), model_cache)
    tree.config.write_text(tree.config.read_text().replace("  batch_size: 8\n", "  engine: fake\n  fake_crash_on: 'poison*'\n"))
    for name in GOOD:
        shutil.copy(speech.DATA / name, tree.inbox / name)
    shutil.copy(speech.DATA / speech.clips()[5], tree.inbox / POISON)
    result = tree.run("run", "--drain", timeout=300)
    return tree, result, {j["name"]: j for j in status(tree)["jobs"]}


def test_the_daemon_outlives_its_worker_and_drains(ran):
    tree, result, _ = ran
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SIGABRT" in result.stdout + result.stderr


def test_the_poison_file_fails_alone_saying_where_the_worker_died(ran):
    tree, _, jobs = ran
    assert tree.files(tree.failed) == [POISON, POISON + ".error.txt"]
    reason = (tree.failed / (POISON + ".error.txt")).read_text()
    end = jobs[POISON]["interruptions"][-1]["reached"][1]
    assert f"whisperd's worker crashed 3 times on this file (killed by signal SIGABRT), each time between 0:00 and 0:{int(end):02d}" in reason
    assert jobs[POISON]["state"] == "failed" and jobs[POISON]["strikes"] == 3
    # its first crash was beside the others: no strike; then alone, three
    causes = [(i["cause"], i["strike"]) for i in jobs[POISON]["interruptions"]]
    assert causes == [("worker-died", False)] + [("worker-died", True)] * 3


def test_its_batch_mates_are_transcribed_once_with_no_strike(ran):
    tree, _, jobs = ran
    assert tree.files(tree.archive) == sorted(GOOD)
    for name in GOOD:
        job = jobs[name]
        assert job["state"] == "done" and job["strikes"] == 0
        # each was in the batch the poison file crashed, and was then tried on its own
        assert [(i["cause"], i["strike"]) for i in job["interruptions"]] == [("worker-died", False)]
        doc = json.loads((tree.outbox / (name.rsplit(".", 1)[0] + ".json")).read_text())
        assert [s["text"] for s in doc["segments"]] == [chunk_text(name, i) for i in range(len(doc["segments"]))]
    assert len(tree.files(tree.outbox)) == 4 * len(GOOD)
