import os
from pathlib import Path

import pytest

from daemon import files
from daemon.errors import UnsafePathError


def test_free_name_counts_like_finder(tmp_path):
    assert files.free_name(tmp_path, "meeting.m4a") == tmp_path / "meeting.m4a"
    (tmp_path / "meeting.m4a").write_text("a")
    assert files.free_name(tmp_path, "meeting.m4a") == tmp_path / "meeting (2).m4a"
    (tmp_path / "meeting (2).m4a").write_text("b")
    assert files.free_name(tmp_path, "meeting.m4a") == tmp_path / "meeting (3).m4a"


def test_free_stem_is_shared_by_every_format(tmp_path):
    (tmp_path / "talk.srt").write_text("x")  # only one format taken: all move to (2)
    assert files.free_stem(tmp_path, "talk", [".txt", ".srt", ".vtt", ".json"]) == "talk (2)"


def test_a_dangling_symlink_counts_as_taken(tmp_path):
    (tmp_path / "x.txt").symlink_to(tmp_path / "nowhere")
    assert files.free_name(tmp_path, "x.txt").name == "x (2).txt"


def test_names_stay_within_255_bytes_without_cutting_a_character(tmp_path):
    stem = "录音" * 60  # 360 bytes in UTF-8
    name = files.fit_name(stem, ".m4a.error.txt")
    assert len(name.encode()) <= 255 and name.endswith(".m4a.error.txt")
    name.encode("utf-8").decode("utf-8")
    (tmp_path / files.fit_name(stem, ".txt")).write_text("x")
    second = files.free_stem(tmp_path, stem, [".txt"])
    assert second.endswith(" (2)") and len((second + ".txt").encode()) <= 255


def test_write_atomic_never_overwrites(tmp_path):
    files.write_atomic(tmp_path, "a.txt", b"first")
    with pytest.raises(FileExistsError):
        files.write_atomic(tmp_path, "a.txt", b"second")
    assert (tmp_path / "a.txt").read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temporary left behind
    files.write_atomic(tmp_path, "a.txt", b"third", replace=True)
    assert (tmp_path / "a.txt").read_bytes() == b"third"


def test_move_refuses_to_overwrite_and_is_idempotent(tmp_path):
    src, dest = tmp_path / "in.m4a", tmp_path / "out" / "in.m4a"
    dest.parent.mkdir()
    src.write_bytes(b"audio")
    files.move(src, dest)
    assert not src.exists() and dest.read_bytes() == b"audio"
    assert files.move(src, dest) == dest  # a retry after the move finds it done
    src.write_bytes(b"other")
    with pytest.raises(FileExistsError):
        files.move(src, dest)
    assert dest.read_bytes() == b"audio" and src.read_bytes() == b"other"


def test_move_finishes_a_move_interrupted_between_link_and_unlink(tmp_path):
    src, dest = tmp_path / "a.wav", tmp_path / "b.wav"
    src.write_bytes(b"x")
    os.link(src, dest)
    files.move(src, dest)
    assert not src.exists() and dest.read_bytes() == b"x"


def test_move_of_a_symlink_moves_the_link_not_its_target(tmp_path):
    target = tmp_path / "secret.wav"
    target.write_bytes(b"private")
    link = tmp_path / "inbox" / "link.wav"
    link.parent.mkdir()
    link.symlink_to(target)
    dest = tmp_path / "failed" / "link.wav"
    dest.parent.mkdir()
    files.move(link, dest)
    assert dest.is_symlink() and target.read_bytes() == b"private" and not os.path.lexists(link)


def test_mirror_keeps_subfolders_and_refuses_escapes(tmp_path):
    assert files.mirror(tmp_path, "a/b/c.m4a") == tmp_path / "a" / "b"
    with pytest.raises(UnsafePathError):
        files.mirror(tmp_path, "../../etc/passwd")


def test_ensure_dir_refuses_a_symlinked_subfolder_leading_out(tmp_path):
    root, outside = tmp_path / "out", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "sub").symlink_to(outside)
    with pytest.raises(UnsafePathError):
        files.ensure_dir(root / "sub", root)


def test_sweep_temps_removes_only_our_hidden_temporaries(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".whisperd-abc.tmp").write_text("half")
    (tmp_path / "keep.txt").write_text("x")
    assert files.sweep_temps(tmp_path) == 1
    assert (tmp_path / "keep.txt").exists() and not (tmp_path / "sub" / ".whisperd-abc.tmp").exists()


def test_content_hash_is_streamed_sha256(tmp_path):
    import hashlib

    p = tmp_path / "f"
    data = os.urandom(3 * 1024 * 1024 + 7)
    p.write_bytes(data)
    assert files.content_hash(p, block=65536) == hashlib.sha256(data).hexdigest()


def test_hashing_a_named_pipe_is_refused_at_once_instead_of_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "x.wav"
    os.mkfifo(fifo)
    with pytest.raises(files.NotRegularFile, match="named pipe"):
        files.content_hash(fifo)


def test_a_stalled_read_is_reported_and_does_not_hold_up_the_others():
    import threading

    from daemon.offthread import OffThread

    t = [0.0]
    release = threading.Event()
    done = threading.Event()
    reads = OffThread(limit=2, stall_seconds=30, monotonic=lambda: t[0], on_done=done.set)
    assert reads.submit("stuck", lambda: release.wait(10))
    assert not reads.submit("stuck", lambda: 1)  # not twice at once
    assert reads.submit("quick", lambda: 42)
    assert done.wait(5)
    assert [(k, r, e) for k, r, e in reads.collect()] == [("quick", 42, None)]
    t[0] = 31.0
    assert reads.collect() == [] and reads.pending() == 0 and len(reads) == 1  # stalled: a drain does not wait for it
    release.set()
