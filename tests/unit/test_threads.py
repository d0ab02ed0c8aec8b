"""Threads follow the load: the cores other programs keep busy are left to them."""

from daemon.engines.threads import FreeCores, _busy_seconds, _own_seconds, reading


class World:
    """CPU seconds used by everything and by this process, on a clock the test moves."""

    def __init__(self) -> None:
        self.now = self.busy = self.own = 0.0

    def run(self, seconds: float, *, ours: float, others: float) -> None:
        """``seconds`` pass; this process keeps ``ours`` cores busy, other programs ``others``."""
        self.now += seconds
        self.own += ours * seconds
        self.busy += (ours + others) * seconds

    def reading(self):
        return reading(busy=lambda: self.busy, own=lambda: self.own, clock=lambda: self.now)

    def cores(self, n: int, since=None) -> FreeCores:
        return FreeCores(n, busy=lambda: self.busy, own=lambda: self.own, clock=lambda: self.now, since=since)


def test_all_cores_while_nothing_else_runs():
    w = World()
    free = w.cores(2)  # made when the model loads
    assert free() == 2  # the first batch, at once: too soon to tell
    w.run(5, ours=2.0, others=0.02)
    assert free() == 2


def test_a_busy_program_on_one_core_takes_it_and_gives_it_back():
    w = World()
    free = w.cores(2)
    w.run(2, ours=1.0, others=1.0)  # while the model loads
    assert free() == 1  # the first batch already leaves that core alone
    w.run(5, ours=1.0, others=0.95)  # still there: our one thread is not what keeps it busy
    assert free() == 1
    w.run(5, ours=1.0, others=0.0)  # gone
    assert free() == 2


def test_the_first_batch_looks_back_to_when_the_model_began_to_load():
    # The engine is built at the end of the load (torch's import comes first) and its first
    # batch follows within a second: a reading from that moment alone is too recent to tell.
    w = World()
    began = w.reading()
    w.run(1.5, ours=1.0, others=1.0)  # torch and the model load; a busy program on the other core
    free, blind = w.cores(2, since=began), w.cores(2)
    w.run(0.5, ours=1.0, others=1.0)  # the first chunks are decoded
    assert blind() == 2  # too soon to tell: both cores, one of them shared with the busy program
    assert free() == 1


def test_light_background_work_takes_no_core():
    w = World()
    free = w.cores(4)
    free()
    w.run(5, ours=4.0, others=0.4)
    assert free() == 4
    w.run(5, ours=4.0, others=2.6)
    assert free() == 1
    w.run(5, ours=1.0, others=9.0)  # more than all the cores: still one thread
    assert free() == 1


def test_readings_closer_than_a_second_keep_the_last_answer():
    w = World()
    free = w.cores(2)
    free()
    w.run(0.2, ours=0.0, others=2.0)
    assert free() == 2  # too short to tell
    w.run(2, ours=1.0, others=1.0)
    assert free() == 1


def test_the_real_readings_count_up():
    assert _busy_seconds() >= 0 and _own_seconds() >= 0
    before = _own_seconds()
    sum(i * i for i in range(300_000))
    assert _own_seconds() >= before
