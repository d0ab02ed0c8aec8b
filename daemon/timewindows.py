"""Schedule time windows (``schedule.windows``, ``schedule.days``): when new work may start. Not to
be confused with the engine's windows, the 30 s stretches of audio the model reads at a time.

A window is ``"HH:MM-HH:MM"`` in local wall-clock time. It may cross midnight
(``"22:00-07:00"``); a window whose start equals its end lasts a whole day.
The start is inclusive and the end exclusive. ``days`` (``"mon"`` .. ``"sun"``)
names the days on which a window *opens*: with ``days: [fri]`` the window
``22:00-07:00`` runs from Friday 22:00 to Saturday 07:00. No windows means
always open; no days means every day.

Everything here is pure and works on the wall-clock fields of the datetime it
is given (naive local time, or aware in any zone), so daylight-saving changes
do not enter the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Iterable, Sequence

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_LONG = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True)
class Window:
    """One daily window, as minutes after midnight."""

    start: int
    end: int

    @classmethod
    def parse(cls, text: str) -> "Window":
        """Read ``"HH:MM-HH:MM"``; raises ValueError on anything else."""
        try:
            first, second = text.strip().split("-")
            return cls(_minutes(first), _minutes(second))
        except ValueError:
            raise ValueError(f'window {text!r} is not of the form "HH:MM-HH:MM"') from None

    @property
    def length(self) -> int:
        """Minutes the window stays open; equal start and end means a whole day."""
        return (self.end - self.start) % _MINUTES_PER_DAY or _MINUTES_PER_DAY

    @property
    def start_time(self) -> time:
        return time(self.start // 60, self.start % 60)

    @property
    def end_time(self) -> time:
        return time(self.end // 60, self.end % 60)

    def __str__(self) -> str:
        return f"{self.start_time:%H:%M}-{self.end_time:%H:%M}"


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.strip().split(":")
    h, m = int(hours), int(minutes)
    if not (0 <= h < 24 and 0 <= m < 60) or len(minutes) != 2:
        raise ValueError(hhmm)
    return h * 60 + m


def parse_windows(windows: Iterable[str | Window]) -> tuple[Window, ...]:
    return tuple(w if isinstance(w, Window) else Window.parse(w) for w in windows)


def day_numbers(days: Iterable[str]) -> frozenset[int]:
    """``("mon", "fri")`` → ``{0, 4}`` (Python's weekday numbers). Raises ValueError on an unknown day."""
    out = set()
    for d in days:
        key = d.strip().lower()[:3]
        if key not in DAY_NAMES:
            raise ValueError(f"day {d!r} is not one of {', '.join(DAY_NAMES)}")
        out.add(DAY_NAMES.index(key))
    return frozenset(out)


def _allowed(day: date, allowed: frozenset[int]) -> bool:
    return not allowed or day.weekday() in allowed


def in_window(now: datetime, windows: Sequence[str | Window], days: Sequence[str] = ()) -> bool:
    """Whether new work may start at ``now``. No windows: always (subject to ``days``)."""
    allowed = day_numbers(days)
    parsed = parse_windows(windows)
    if not parsed:
        return _allowed(now.date(), allowed)
    seconds = now.hour * 3600 + now.minute * 60 + now.second + now.microsecond / 1e6
    for w in parsed:
        # Only the latest opening at or before now can cover it: windows last at most a day.
        opened_today = seconds >= w.start * 60
        since_open = seconds - w.start * 60 if opened_today else seconds + 86400 - w.start * 60
        opened_on = now.date() if opened_today else now.date() - timedelta(days=1)
        if since_open < w.length * 60 and _allowed(opened_on, allowed):
            return True
    return False


def next_window_start(now: datetime, windows: Sequence[str | Window], days: Sequence[str] = ()) -> datetime | None:
    """The first moment at or after ``now`` at which a window opens.

    None when there are no windows (nothing to wait for). The result carries
    ``now``'s tzinfo and is built from wall-clock fields.
    """
    allowed = day_numbers(days)
    parsed = parse_windows(windows)
    if not parsed:
        return None
    best: datetime | None = None
    for offset in range(8):
        day = now.date() + timedelta(days=offset)
        if not _allowed(day, allowed):
            continue
        for w in parsed:
            candidate = datetime.combine(day, w.start_time, tzinfo=now.tzinfo)
            if candidate >= now and (best is None or candidate < best):
                best = candidate
        if best is not None:
            return best
    return None


def describe_next(now: datetime, start: datetime) -> str:
    """``"22:00"`` when the opening is less than a day away, else ``"22:00 on Friday"``."""
    text = f"{start:%H:%M}"
    if start - now >= timedelta(days=1):
        text += f" on {_DAY_LONG[start.weekday()]}"
    return text


@dataclass(frozen=True)
class Boundary:
    """A moment, repeated weekly, at which some window opens or closes."""

    hour: int
    minute: int
    days: tuple[str, ...]  # empty: every day


def boundaries(windows: Sequence[str | Window], days: Sequence[str] = ()) -> tuple[Boundary, ...]:
    """Every opening and closing time, with the days it happens on, merged per time of day.

    A window that crosses midnight closes on the day after the one it opened on.
    Days without windows change at midnight.
    """
    allowed = sorted(day_numbers(days))
    per_time: dict[int, set[int] | None] = {}

    def add(minute: int, on: Iterable[int] | None) -> None:
        current = per_time.get(minute, set())
        if on is None or current is None:
            per_time[minute] = None  # every day
        else:
            current.update(on)
            per_time[minute] = current

    parsed = parse_windows(windows)
    if not parsed and allowed:
        parsed = (Window(0, 0),)  # days alone: each allowed day opens at midnight for a whole day
    for w in parsed:
        add(w.start, allowed or None)
        shift = (w.start + w.length) // _MINUTES_PER_DAY  # 1 when it closes on the next day
        add(w.end, [(d + shift) % 7 for d in allowed] if allowed else None)
    out = []
    for minute in sorted(per_time):
        on = per_time[minute]
        names = () if on is None or len(on) == 7 else tuple(DAY_NAMES[d] for d in sorted(on))
        out.append(Boundary(minute // 60, minute % 60, names))
    return tuple(out)
