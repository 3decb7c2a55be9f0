"""Window state of one model version: count windows (tumbling or hopping) or
tumbling event-time windows. Bounded by the window size, never the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from undertow.models.drift.config import DriftConfig


@dataclass(frozen=True)
class ClosedWindow:
    index: int
    rows: npt.NDArray[np.float64]  # (n, columns), NaN = missing
    start_ts: float
    end_ts: float


class StoredWindow(Protocol):
    """The stored window state ``WindowState.from_columns`` reads (the ``drift_state`` row's columns)."""

    @property
    def next_window(self) -> int: ...
    @property
    def buffer(self) -> bytes | None: ...
    @property
    def buffer_ts(self) -> bytes | None: ...
    @property
    def since_evaluation(self) -> int: ...
    @property
    def window_start_ts(self) -> float | None: ...
    @property
    def late_events(self) -> int: ...


class WindowState:
    """Feeds rows in arrival order and returns the windows they close.

    >>> w = WindowState(DriftConfig(window_size=100, hop=50), columns=1)
    >>> closed = w.add(np.zeros((260, 1)), np.arange(260.0))
    >>> [(c.index, c.rows.shape[0], c.start_ts, c.end_ts) for c in closed]
    [(0, 100, 0.0, 99.0), (1, 100, 50.0, 149.0), (2, 100, 100.0, 199.0), (3, 100, 150.0, 249.0)]
    """

    def __init__(
        self,
        config: DriftConfig,
        columns: int,
        *,
        next_window: int = 0,
        rows: npt.NDArray[np.float64] | None = None,
        ts: npt.NDArray[np.float64] | None = None,
        since_evaluation: int = 0,
        window_start_ts: float | None = None,
        late_events: int = 0,
    ):
        self.config = config
        self.columns = columns
        self.next_window = next_window
        self.rows = rows if rows is not None else np.empty((0, columns))
        self.ts = ts if ts is not None else np.empty(0)
        self.since_evaluation = since_evaluation
        self.window_start_ts = window_start_ts
        self.late_events = late_events

    def add(self, rows: npt.NDArray[np.float64], ts: npt.NDArray[np.float64]) -> list[ClosedWindow]:
        if self.config.window_seconds is not None:
            return self._add_by_time(rows, ts, self.config.window_seconds)
        return self._add_by_count(rows, ts)

    def _close(
        self,
        rows: npt.NDArray[np.float64],
        ts: npt.NDArray[np.float64],
        start: float | None = None,
        end: float | None = None,
    ) -> ClosedWindow:
        window = ClosedWindow(
            self.next_window,
            rows.copy(),
            float(ts.min()) if start is None else start,
            float(ts.max()) if end is None else end,
        )
        self.next_window += 1
        return window

    def _add_by_count(self, rows: npt.NDArray[np.float64], ts: npt.NDArray[np.float64]) -> list[ClosedWindow]:
        size, hop = self.config.window_size, self.config.hop
        closed: list[ClosedWindow] = []
        i = 0
        while i < len(rows):
            if hop is None:
                need = size - len(self.rows)
            else:
                need = max(hop - self.since_evaluation, size - len(self.rows), 1)
            take = slice(i, i + need)
            self.rows = np.concatenate([self.rows, rows[take]])[-size:]
            self.ts = np.concatenate([self.ts, ts[take]])[-size:]
            taken = len(rows[take])
            self.since_evaluation += taken
            i += taken
            if len(self.rows) == size and (hop is None or self.since_evaluation >= hop):
                closed.append(self._close(self.rows, self.ts))
                self.since_evaluation = 0
                if hop is None:
                    self.rows, self.ts = self.rows[:0], self.ts[:0]
        return closed

    def _add_by_time(
        self, rows: npt.NDArray[np.float64], ts: npt.NDArray[np.float64], seconds: float
    ) -> list[ClosedWindow]:
        """Tumbling windows of ``seconds`` (``window_seconds``) event time, one open at a time.

        An event of a later window closes the open one; an event of an
        earlier window than the open one is late: counted, not used.
        """
        cap = self.config.max_window_rows
        starts = np.floor(ts / seconds) * seconds
        closed: list[ClosedWindow] = []
        keep: list[int] = []
        for i, start in enumerate(starts):
            if self.window_start_ts is None:
                self.window_start_ts = float(start)
            if start < self.window_start_ts:
                self.late_events += 1
                continue
            if start > self.window_start_ts:
                closed.extend(self._flush_time_window(rows, ts, keep, self.window_start_ts, seconds))
                keep = []
                self.window_start_ts = float(start)
            if len(self.rows) + len(keep) < cap:
                keep.append(i)
        if keep:
            self.rows = np.concatenate([self.rows, rows[keep]])
            self.ts = np.concatenate([self.ts, ts[keep]])
        return closed

    def _flush_time_window(
        self, rows: npt.NDArray[np.float64], ts: npt.NDArray[np.float64], keep: list[int], start: float, seconds: float
    ) -> list[ClosedWindow]:
        """The open window (``start``, ``seconds`` long): what the state holds and ``keep`` of ``rows``."""
        window_rows = np.concatenate([self.rows, rows[keep]])
        window_ts = np.concatenate([self.ts, ts[keep]])
        self.rows, self.ts = window_rows[:0], window_ts[:0]
        if len(window_rows) == 0:
            return []
        return [self._close(window_rows, window_ts, start, start + seconds)]

    # Persistence as plain numbers: float64 bytes, never pickles.
    def to_columns(self) -> dict[str, Any]:
        return {
            "next_window": self.next_window,
            "rows": len(self.rows),
            "buffer": self.rows.astype("<f8").tobytes(),
            "buffer_ts": self.ts.astype("<f8").tobytes(),
            "since_evaluation": self.since_evaluation,
            "window_start_ts": self.window_start_ts,
            "late_events": self.late_events,
        }

    @classmethod
    def from_columns(cls, config: DriftConfig, columns: int, record: StoredWindow) -> WindowState:
        rows = (
            np.frombuffer(record.buffer or b"", dtype="<f8").reshape(-1, columns).copy()
            if columns
            else np.empty((0, 0))
        )
        ts = np.frombuffer(record.buffer_ts or b"", dtype="<f8").copy()
        return cls(
            config,
            columns,
            next_window=record.next_window,
            rows=rows,
            ts=ts,
            since_evaluation=record.since_evaluation,
            window_start_ts=record.window_start_ts,
            late_events=record.late_events,
        )
