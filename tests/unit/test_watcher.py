import os
from pathlib import Path

from daemon.watcher import Found, Settler, ignored, locate, scan


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_ignored_names():
    for name in [".DS_Store", "._meeting.m4a", ".hidden.wav", "~$notes.m4a", "movie.mp4.download", "x.crdownload", "a.part", "b.tmp"]:
        assert ignored(name), name
    for name in ["meeting.m4a", "Interview 2.mp3", "录音.wav", "-leading.wav"]:
        assert not ignored(name), name


def test_scan_finds_files_at_any_depth_and_reports_symlinks_without_following(tmp_path):
    inbox = tmp_path / "inbox"
    (inbox / "a" / "b").mkdir(parents=True)
    (inbox / "a" / "b" / "deep.wav").write_bytes(b"x")
    (inbox / "top.m4a").write_bytes(b"x")
    (inbox / ".DS_Store").write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "private.wav").write_bytes(b"x")
    (inbox / "linkdir").symlink_to(outside)
    found = sorted(f.rel for f in scan(0, inbox))
    assert found == ["a/b/deep.wav", "linkdir", "top.m4a"]


def test_locate_maps_a_path_to_its_inbox():
    inboxes = [Path("/x/in1"), Path("/x/in2")]
    assert locate("/x/in2/sub/a.wav", inboxes) == Found(1, "/x/in2/sub/a.wav", "sub/a.wav")
    assert locate("/x/other/a.wav", inboxes) is None
    assert locate("/x/in1/.hidden/a.wav", inboxes) is None


def test_settler_waits_until_size_and_mtime_stand_still(tmp_path):
    clock = Clock()
    p = tmp_path / "growing.wav"
    p.write_bytes(b"a")
    s = Settler(5.0, clock=clock)
    s.add(Found(0, str(p), "growing.wav"))
    assert s.poll() == []  # first sight
    clock.t = 4.9
    assert s.poll() == []
    with open(p, "ab") as f:
        f.write(b"more")
    clock.t = 9.0
    assert s.poll() == []  # changed: the clock restarts
    clock.t = 13.9
    assert s.poll() == []
    clock.t = 14.1
    ready = s.poll()
    assert [r.found.rel for r in ready] == ["growing.wav"] and ready[0].size == 5
    assert len(s) == 0


def test_settler_drops_vanished_files_and_waits_for_readable(tmp_path):
    clock = Clock()
    gone, locked = tmp_path / "gone.wav", tmp_path / "locked.wav"
    gone.write_bytes(b"x")
    locked.write_bytes(b"x")
    readable = {str(locked): False}
    s = Settler(1.0, clock=clock, readable=lambda path: readable.get(path, True))
    s.add(Found(0, str(gone), "gone.wav"))
    s.add(Found(0, str(locked), "locked.wav"))
    s.poll()
    gone.unlink()
    clock.t = 2
    assert s.poll() == []
    assert len(s) == 1  # the vanished one is forgotten, the locked one still watched
    readable[str(locked)] = True
    assert [r.found.rel for r in s.poll()] == ["locked.wav"]
