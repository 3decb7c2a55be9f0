"""Window state of one model version: count windows (tumbling or hopping) or
tumbling event-time windows. Bounded by the window size, never the stream.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from undertow.models.drift.config import DriftConfig


@dataclass(frozen=True)
class ClosedWindow:
    index: int
    rows: np.ndarray     # (n, columns) float64, NaN = missing
    start_ts: float
    end_ts: float


class WindowState:
    """Feeds rows in arrival order and returns the windows they close.

    >>> w = WindowState(DriftConfig(window_size=100, hop=50), columns=1)
    >>> closed = w.add(np.zeros((260, 1)), np.arange(260.0))
    >>> [(c.index, c.rows.shape[0], c.start_ts, c.end_ts) for c in closed]
    [(0, 100, 0.0, 99.0), (1, 100, 50.0, 149.0), (2, 100, 100.0, 199.0), (3, 100, 150.0, 249.0)]
    """

    def __init__(self, config: DriftConfig, columns: int, *, next_window: int = 0,
                 rows: np.ndarray | None = None, ts: np.ndarray | None = None, since_evaluation: int = 0,
                 window_start_ts: float | None = None, late_events: int = 0):
        self.config = config
        self.columns = columns
        self.next_window = next_window
        self.rows = rows if rows is not None else np.empty((0, columns))
        self.ts = ts if ts is not None else np.empty(0)
        self.since_evaluation = since_evaluation
        self.window_start_ts = window_start_ts
        self.late_events = late_events

    def add(self, rows: np.ndarray, ts: np.ndarray) -> list[ClosedWindow]:
        if self.config.window_seconds is not None:
            return self._add_by_time(rows, ts)
        return self._add_by_count(rows, ts)

    def _close(self, rows: np.ndarray, ts: np.ndarray, start: float | None = None,
               end: float | None = None) -> ClosedWindow:
        window = ClosedWindow(self.next_window, rows.copy(),
                              float(ts.min()) if start is None else start,
                              float(ts.max()) if end is None else end)
        self.next_window += 1
        return window

    def _add_by_count(self, rows: np.ndarray, ts: np.ndarray) -> list[ClosedWindow]:
        size, hop = self.config.window_size, self.config.hop
        closed, i = [], 0
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

    def _add_by_time(self, rows: np.ndarray, ts: np.ndarray) -> list[ClosedWindow]:
        """Tumbling windows of ``window_seconds`` event time, one open at a time.

        An event of a later window closes the open one; an event of an
        earlier window than the open one is late: counted, not used.
        """
        seconds, cap = self.config.window_seconds, self.config.max_window_rows
        starts = np.floor(ts / seconds) * seconds
        closed, keep = [], []
        for i, start in enumerate(starts):
            if self.window_start_ts is None:
                self.window_start_ts = float(start)
            if start < self.window_start_ts:
                self.late_events += 1
                continue
            if start > self.window_start_ts:
                closed.extend(self._flush_time_window(rows, ts, keep))
                keep = []
                self.window_start_ts = float(start)
            if len(self.rows) + len(keep) < cap:
                keep.append(i)
        if keep:
            self.rows = np.concatenate([self.rows, rows[keep]])
            self.ts = np.concatenate([self.ts, ts[keep]])
        return closed

    def _flush_time_window(self, rows, ts, keep) -> list[ClosedWindow]:
        window_rows = np.concatenate([self.rows, rows[keep]])
        window_ts = np.concatenate([self.ts, ts[keep]])
        self.rows, self.ts = window_rows[:0], window_ts[:0]
        if len(window_rows) == 0:
            return []
        start = self.window_start_ts
        return [self._close(window_rows, window_ts, start, start + self.config.window_seconds)]

    # Persistence as plain numbers: float64 bytes, never pickles.
    def to_columns(self) -> dict:
        return {"next_window": self.next_window, "rows": len(self.rows),
                "buffer": self.rows.astype("<f8").tobytes(), "buffer_ts": self.ts.astype("<f8").tobytes(),
                "since_evaluation": self.since_evaluation, "window_start_ts": self.window_start_ts,
                "late_events": self.late_events}

    @classmethod
    def from_columns(cls, config: DriftConfig, columns: int, record) -> "WindowState":
        rows = np.frombuffer(record.buffer or b"", dtype="<f8").reshape(-1, columns).copy() \
            if columns else np.empty((0, 0))
        ts = np.frombuffer(record.buffer_ts or b"", dtype="<f8").copy()
        return cls(config, columns, next_window=record.next_window, rows=rows, ts=ts,
                   since_evaluation=record.since_evaluation, window_start_ts=record.window_start_ts,
                   late_events=record.late_events)

