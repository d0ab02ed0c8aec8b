from datetime import datetime, timezone

import pytest

from daemon.timewindows import Boundary, Window, boundaries, describe_next, in_window, next_window_start

# 2024-01-01 is a Monday; 2024-01-05 a Friday.


def at(day: int, hh: int, mm: int, ss: int = 0, us: int = 0) -> datetime:
    return datetime(2024, 1, day, hh, mm, ss, us)


@pytest.mark.parametrize(
    "now, windows, days, expected",
    [
        # no windows: always, unless days say otherwise
        (at(1, 12, 0), (), (), True),
        (at(1, 12, 0), (), ("tue",), False),
        (at(2, 0, 0), (), ("tue",), True),
        # same-day window: start inclusive, end exclusive
        (at(1, 8, 59, 59, 999999), ("09:00-17:00",), (), False),
        (at(1, 9, 0), ("09:00-17:00",), (), True),
        (at(1, 16, 59, 59), ("09:00-17:00",), (), True),
        (at(1, 17, 0), ("09:00-17:00",), (), False),
        # crossing midnight
        (at(1, 21, 59), ("22:00-07:00",), (), False),
        (at(1, 22, 0), ("22:00-07:00",), (), True),
        (at(1, 23, 59, 59), ("22:00-07:00",), (), True),
        (at(2, 0, 0), ("22:00-07:00",), (), True),
        (at(2, 6, 59, 59), ("22:00-07:00",), (), True),
        (at(2, 7, 0), ("22:00-07:00",), (), False),
        (at(2, 12, 0), ("22:00-07:00",), (), False),
        # days name the day the window opened
        (at(5, 23, 0), ("22:00-07:00",), ("fri",), True),  # Friday night
        (at(6, 3, 0), ("22:00-07:00",), ("fri",), True),  # Saturday morning, opened Friday
        (at(5, 3, 0), ("22:00-07:00",), ("fri",), False),  # Friday morning, opened Thursday
        (at(6, 23, 0), ("22:00-07:00",), ("fri",), False),  # Saturday night
        (at(1, 3, 0), ("22:00-07:00",), ("sun",), True),  # Monday 03:00, opened Sunday (previous week)
        # several windows
        (at(1, 12, 30), ("22:00-07:00", "12:00-13:00"), (), True),
        (at(1, 13, 0), ("22:00-07:00", "12:00-13:00"), (), False),
        (at(1, 2, 0), ("12:00-13:00", "22:00-07:00"), (), True),
        # ends exactly at midnight
        (at(1, 23, 59), ("22:00-00:00",), (), True),
        (at(2, 0, 0), ("22:00-00:00",), (), False),
        # start == end: a whole day from the start
        (at(1, 5, 59), ("06:00-06:00",), ("mon",), False),
        (at(1, 6, 0), ("06:00-06:00",), ("mon",), True),
        (at(2, 5, 59), ("06:00-06:00",), ("mon",), True),
        (at(2, 6, 0), ("06:00-06:00",), ("mon",), False),
        (at(3, 12, 0), ("00:00-00:00",), (), True),
    ],
)
def test_in_window(now, windows, days, expected):
    assert in_window(now, windows, days) is expected


def test_in_window_uses_wall_clock_of_aware_datetimes():
    now = datetime(2024, 1, 1, 22, 30, tzinfo=timezone.utc)
    assert in_window(now, ("22:00-07:00",), ("mon",))


@pytest.mark.parametrize(
    "now, windows, days, expected",
    [
        ((at(1, 12, 0)), (), (), None),
        ((at(1, 12, 0)), ("22:00-07:00",), (), at(1, 22, 0)),
        ((at(1, 22, 0)), ("22:00-07:00",), (), at(1, 22, 0)),  # at the start: now
        ((at(1, 22, 0, 0, 1)), ("22:00-07:00",), (), at(2, 22, 0)),
        ((at(1, 23, 0)), ("22:00-07:00", "07:30-08:00"), (), at(2, 7, 30)),
        ((at(1, 12, 0)), ("22:00-07:00",), ("fri",), at(5, 22, 0)),
        ((at(5, 23, 0)), ("22:00-07:00",), ("fri",), at(12, 22, 0)),  # a week later
        ((at(6, 1, 0)), ("22:00-07:00",), ("sat", "sun"), at(6, 22, 0)),
    ],
)
def test_next_window_start(now, windows, days, expected):
    assert next_window_start(now, windows, days) == expected


def test_next_window_start_keeps_tzinfo():
    now = datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)
    assert next_window_start(now, ("22:00-07:00",)) == datetime(2024, 1, 1, 22, 0, tzinfo=timezone.utc)


def test_describe_next_adds_the_day_only_when_a_day_or_more_away():
    assert describe_next(at(1, 12, 0), at(1, 22, 0)) == "22:00"
    assert describe_next(at(1, 23, 0), at(2, 7, 0)) == "07:00"
    assert describe_next(at(1, 12, 0), at(5, 22, 0)) == "22:00 on Friday"


def test_window_parse_and_length():
    assert Window.parse("22:00-07:00") == Window(22 * 60, 7 * 60)
    assert Window.parse("22:00-07:00").length == 9 * 60
    assert Window.parse("06:00-06:00").length == 24 * 60
    assert str(Window.parse(" 09:05-17:30 ")) == "09:05-17:30"
    for bad in ("9-17", "25:00-07:00", "22:00-07:0", "22:00", "aa:bb-cc:dd"):
        with pytest.raises(ValueError):
            Window.parse(bad)


def test_unknown_day_is_rejected():
    with pytest.raises(ValueError):
        in_window(at(1, 1, 0), (), ("someday",))


def test_boundaries_shift_the_close_of_a_midnight_window_to_the_next_day():
    assert boundaries(("22:00-07:00",), ("fri", "sun")) == (
        Boundary(7, 0, ("mon", "sat")),
        Boundary(22, 0, ("fri", "sun")),
    )


def test_boundaries_merge_and_every_day():
    assert boundaries(("09:00-12:00", "12:00-13:00"), ()) == (
        Boundary(9, 0, ()),
        Boundary(12, 0, ()),
        Boundary(13, 0, ()),
    )
    assert boundaries((), ()) == ()
    assert boundaries((), ("mon", "fri")) == (Boundary(0, 0, ("mon", "tue", "fri", "sat")),)
    # a whole-day window opening Monday closes Tuesday at the same time: one boundary, both days
    assert boundaries(("06:00-06:00",), ("mon",)) == (Boundary(6, 0, ("mon", "tue")),)
    # a window ending at midnight closes at 00:00 the next day
    assert boundaries(("22:00-00:00",), ("sun",)) == (Boundary(0, 0, ("mon",)), Boundary(22, 0, ("sun",)))
