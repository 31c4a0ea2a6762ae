"""Bounded prefetch: the next chunk decodes in a background thread while the current one is scored.

FFmpeg (PyAV) and DALI release the GIL while they decode, and so does PyTorch while it detects and
scores, so decoding overlaps the rest of the pipeline. At most `depth` finished chunks wait in the
queue, plus the one being decoded and the one being scored: memory stays flat in the video's length.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_POLL_S = 0.05


class _End:
    pass


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher(Generic[T]):
    """Iterates `source` in a daemon thread, at most `depth` items ahead of the consumer.

    Exceptions raised by `source` are re-raised by `__next__` in the consumer's thread. `close()`
    (or leaving a `with` block) stops the thread and closes `source` in it,
    so a generator's cleanup (containers, decoder pipelines) runs where the generator ran.
    """

    def __init__(self, source: Iterator[T], depth: int = 1, name: str = "ralf-prefetch") -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._source = source
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        """Queue `item` unless stopped; False when the consumer went away."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    break
            else:
                self._put(_End())
        except BaseException as error:  # noqa: BLE001  (handed to the consumer, raised there)
            self._put(_Failure(error))
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Prefetcher[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if isinstance(item, _End):
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            raise item.error
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the background thread (it finishes the item it is on) and close the source."""
        self._done = True
        self._stop.set()
        while True:  # unblock a thread waiting on a full queue, and free the chunks it holds
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prefetch(source: Iterator[T], depth: int) -> Iterator[T]:
    """`source` itself for depth 0 (no thread), else a `Prefetcher` running `depth` items ahead."""
    return source if depth <= 0 else Prefetcher(source, depth)
