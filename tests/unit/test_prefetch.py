import threading
import time

import pytest

from daemon.prefetch import Prefetch


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_items_come_in_order_and_then_the_end():
    p = Prefetch(iter(range(100)), depth=3)
    assert list(p) == list(range(100))
    assert list(p) == []
    assert p.join(5)


def test_an_error_arrives_after_the_items_before_it():
    def source():
        yield 1
        yield 2
        raise ValueError("damaged at 2")

    p = Prefetch(source(), depth=8)
    assert next(p) == 1
    assert next(p) == 2
    with pytest.raises(ValueError, match="damaged at 2"):
        next(p)
    with pytest.raises(StopIteration):
        next(p)


def test_it_reads_no_further_ahead_than_its_depth():
    made = []

    def source():
        for i in range(1000):
            made.append(i)
            yield i

    p = Prefetch(source(), depth=2)
    assert next(p) == 0
    _wait(lambda: p._items.full())
    # one item taken, two waiting in the queue, at most one more made and waiting for room
    assert len(made) <= 4
    p.close()


def test_close_stops_the_thread_and_closes_the_source():
    closed = threading.Event()

    def source():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    p = Prefetch(source(), depth=2)
    assert next(p) == 0
    p.close()
    assert p.join(5)
    assert closed.is_set()
    with pytest.raises(StopIteration):
        next(p)
