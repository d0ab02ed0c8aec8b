"""Faults of the machine, not of a file: things in an inbox that are not files, a model that
cannot be had, a folder that cannot be written, a locked database. None of them fails a file."""

import os
import shutil
import socket

import pytest

from tests import speech
from tests.e2e.helpers import status

CLIP = "ls_1988-24833-0002.flac"


@pytest.mark.timeout(180)
def test_a_named_pipe_and_a_socket_in_the_inbox_change_nothing(tree):
    os.mkfifo(tree.inbox / "x.wav")  # opening it for reading would wait for a writer forever
    (tree.inbox / "sub").mkdir()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cwd = os.getcwd()
    os.chdir(tree.inbox / "sub")  # a short relative name: socket paths are limited to ~100 bytes
    try:
        sock.bind("s.m4a")
    finally:
        os.chdir(cwd)
    shutil.copy(speech.DATA / CLIP, tree.inbox / "memo.flac")
    try:
        result = tree.run("run", "--drain", timeout=150)
    finally:
        sock.close()
    assert result.returncode == 0, result.stderr
    assert (tree.outbox / "memo.txt").read_text().strip()
    assert tree.files(tree.failed) == []
    assert [j["name"] for j in status(tree)["jobs"]] == ["memo.flac"]
    assert (tree.inbox / "x.wav").exists() and (tree.inbox / "sub" / "s.m4a").exists()  # left alone
    log = result.stdout + result.stderr
    assert log.count("x.wav: it is a named pipe") == 1, log
    assert log.count("s.m4a: it is a socket") == 1, log
