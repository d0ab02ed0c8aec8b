"""Run an iterator a few items ahead in a thread of its own.

A worker alternates between getting chunks (PyAV decoding, resampling, Silero VAD)
and handing them to the model; done in turn, the model waits for the audio and the
audio for the model. Decoding, onnxruntime and torch all release the GIL, so with
the next chunks prepared in a thread while the model works on the current ones,
much of the audio side leaves a long file's time (docs/decisions.md).

The items, their order and any error are the source's own: an error reaches the
consumer at the point where the source raised it, after the items before it.
"""

from __future__ import annotations

import queue
import threading
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")

_ITEM, _END, _ERROR = "item", "end", "error"


class Prefetch(Generic[T]):
    """``iter(source)``, up to ``depth`` items ahead. ``close()`` stops the thread early."""

    def __init__(self, source: Iterator[T], depth: int, *, name: str = "whisperd-prefetch") -> None:
        self._items: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._produce, args=(source,), name=name, daemon=True)
        self._thread.start()

    def _produce(self, source: Iterator[T]) -> None:
        try:
            for item in source:
                if not self._put((_ITEM, item)):
                    return
            self._put((_END, None))
        except BaseException as exc:  # handed to the consumer, who sees it where the source raised it
            self._put((_ERROR, exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # a generator's finally blocks run now: files it opened are closed

    def _put(self, entry: tuple[str, object]) -> bool:
        """Wait for room, unless told to stop; False when stopped."""
        while not self._stop.is_set():
            try:
                self._items.put(entry, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Prefetch[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        kind, value = self._items.get()
        if kind == _ITEM:
            return value  # type: ignore[return-value]
        self._finished = True
        if kind == _ERROR:
            raise value  # type: ignore[misc]
        raise StopIteration

    def close(self) -> None:
        """Stop reading ahead; the thread ends after the item it is making, if any."""
        self._finished = True
        self._stop.set()
        while True:
            try:
                self._items.get_nowait()
            except queue.Empty:
                break

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; whether it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()
