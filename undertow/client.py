"""Log predictions and labels to Undertow from Python (issue 30).

The client writes the records the monitor reads (``<prefix>predictions`` and
``<prefix>labels``, keyed by the model id, compact JSON) and checks each one
with the monitor's own parser first (``parse_prediction``/``parse_label``,
size limit included): what it accepts, the monitor accepts; a row the
monitor would dead-letter raises :class:`InvalidEvent` (a ``ValueError``)
at the call, naming the field, and nothing of that call is sent::

    from datetime import datetime, timezone
    from undertow.client import Client

    with Client(bootstrap_servers="kafka:9092") as client:      # the services' settings, same names
        event_id = client.log_prediction("churn", {"tenure": 3, "plan": "pro"}, 1,
                                         scores={0: 0.2, 1: 0.8})
        ids = client.log_predictions("churn", frame, model.predict(frame),
                                     scores=model.predict_proba(frame), classes=model.classes_)
        client.log_label("churn", event_id, 0, ts=datetime.now(timezone.utc))
    # leaving the block flushed and closed the producer; client.undelivered says what was lost

Records are keyed by the model id, so one monitor sees all of a model's
events. A *spread* model (``undertow models spread --model-id M --on``: a
model too busy for one monitor) has its events keyed by event id instead,
so they spread over every partition; the client cannot read the registry,
so say it: ``Client(spread=True)`` keys every record by its event id, a
label by the same id as its prediction (the two topics are co-partitioned,
so the pair still meets on one partition)::

    with Client(bootstrap_servers="kafka:9092", spread=True) as client:
        event_id = client.log_prediction("clicks", {"page": "home"}, 0.12)  # key: event_id
        client.log_label("clicks", event_id, 0.0)                           # the same key, the same partition

Settings not given come from the environment as for the services
(``UNDERTOW_KAFKA_BOOTSTRAP_SERVERS``, ``UNDERTOW_TOPIC_PREFIX``,
``UNDERTOW_KAFKA_SECURITY_PROTOCOL``, ...): keyword arguments take the
``Settings`` field names without ``kafka_`` (``security_protocol``,
``sasl_mechanism``, ``sasl_plain_username``, ``ssl_cafile``, ...), or pass a
``Settings`` object.

Delivery is asynchronous and never raises at a ``log_*`` call: a record the
broker did not acknowledge (broker away past the delivery timeout, buffer
full past ``max_block`` seconds) is counted in ``undelivered`` and logged at
most once a second; ``flush()`` waits for every record sent so far and
returns ``undelivered``, so a batch job checks it once at the end. At most
``max_pending`` records wait for the broker (kafka-python 3 buffers without
a bound of its own); past it a call waits for acknowledgements.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from undertow import errors
from undertow.models.drift.errors import class_text
from undertow.worker.runtime.events import DEFAULT_MAX_EVENT_BYTES, parse_label, parse_prediction
from undertow.worker.runtime.settings import Settings, load_settings
from undertow.worker.runtime.topics import Topics
from undertow.worker.runtime.transport import BrokerUnavailable, client_options, unreachable_broker

__all__ = ["Client", "InvalidEvent", "Monitored"]

log = logging.getLogger(__name__)

_SECURITY = frozenset(
    name[len("kafka_") :]
    for name in Settings.model_fields
    if name.startswith("kafka_") and name != "kafka_bootstrap_servers"
)
_SCALARS = frozenset({str, float, int, type(None)})
# Problems listed in an InvalidEvent's message (all of them are in .problems).
_SHOWN = 5
# predict_proba's sums can land a rounding step outside [0, 1]; the monitor refuses 1.0000000000000002.
_ROUNDING = 1e-9


class InvalidEvent(errors.InvalidEvent, ValueError):
    """A row the monitor would dead-letter; nothing of the call that raised it was sent.

    ``problems``: one ``{"loc", "type", "msg", "input"}`` per field at fault;
    ``loc`` starts with the row's position for ``log_predictions`` and
    ``log_labels`` (``(17, "features", "x")``).
    """

    def __init__(self, message: str, problems: list[dict]):
        super().__init__(message)
        self.problems = problems


class _Refused(Exception):
    """One field of one row is wrong, found before the monitor's parser runs."""

    def __init__(self, loc: tuple, msg: str, value: object = None, kind: str = "client_value"):
        super().__init__(msg)
        self.problem = {"loc": loc, "type": kind, "msg": msg, "input": value}


# ---------------------------------------------------------------- values


def _native(value: object) -> object:
    """A numpy scalar as the Python one (np.float32 -> float, np.int64 -> int, np.str_ -> str)."""
    return value.item() if isinstance(value, np.generic) else value


def _missing(value: object) -> bool:
    return (value.__class__ is float and value != value) or value is None or value is pd.NA or value is pd.NaT


def _scalar(loc: tuple, value: object) -> object:
    """``value`` as JSON can carry it, or _Refused: a nested or foreign value has no place in an event."""
    value = _native(value)
    if value.__class__ in _SCALARS or value is True or value is False:
        return value  # bools pass on: the monitor's parser refuses them with its own words
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):  # an IntEnum, a str subclass
        return value
    raise _Refused(loc, f"must be a number, a string or null, not {type(value).__name__}", repr(value)[:80])


def _target(loc: tuple, value: object) -> object:
    """A prediction or label: a boolean class (True, np.bool_) as its text, "True" or "False", the way the
    server answers a boolean classifier and the monitor keys its scores (events carry numbers or strings)."""
    value = _native(value)
    if value is True or value is False:
        return str(value)
    return _scalar(loc, value)


def _features(row: Mapping) -> dict:
    """A row as event features: numpy scalars converted, NaN/None/pd.NA as null (a missing value)."""
    features = {}
    for name, value in row.items():
        name = _native(name)
        if not isinstance(name, str):
            raise _Refused(("features",), f"feature names must be strings, not {type(name).__name__} {name!r}")
        value = _native(value)  # first: a np.float64 NaN is a missing value too
        features[name] = None if _missing(value) else _scalar(("features", name), value)
    return features


def _scores(scores: object, classes: Sequence | None) -> dict | None:
    """Scores keyed by class as text (the monitor's class_text: 1, 1.0 and "1" are one class)."""
    if scores is None:
        return None
    if not isinstance(scores, Mapping):
        if classes is None:
            raise _Refused(
                ("scores",), "give the classes (e.g. classes=model.classes_) with scores that are not a dict"
            )
        values = list(np.asarray(scores).ravel())
        if len(values) != len(classes):
            raise _Refused(("scores",), f"{len(values)} scores for {len(classes)} classes")
        scores = dict(zip(classes, values))
    out = {}
    for key, value in scores.items():
        name = class_text(_native(key))
        value = _scalar(("scores", name), value)
        if value.__class__ is float and (-_ROUNDING < value < 0 or 1 < value < 1 + _ROUNDING):
            value = min(max(value, 0.0), 1.0)
        out[name] = value
    return out


def _utc_text(ts: object, max_ahead: float | None, loc: tuple = ("ts",)) -> str:
    """``ts`` (None: now; an aware datetime; an RFC 3339 string) as RFC 3339 in UTC with ``Z``."""
    if ts is None:
        return _format(datetime.now(UTC))
    if isinstance(ts, str):
        ts = _from_text(ts, loc)
    if ts is pd.NaT or not isinstance(ts, datetime):
        raise _Refused(loc, f"must be a datetime with a timezone or an RFC 3339 string, not {ts!r}"[:200])
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise _Refused(
            loc,
            f"{ts.isoformat()} is a naive datetime: give its timezone, e.g. "
            "datetime.now(timezone.utc) or ts.replace(tzinfo=timezone.utc)",
            str(ts),
        )
    if isinstance(ts, pd.Timestamp):
        ts = ts.to_pydatetime(warn=False)  # nanoseconds would not parse back as RFC 3339
    try:
        utc = ts.astimezone(UTC)
    except OverflowError:
        raise _Refused(loc, f"{ts.isoformat()} is outside the representable range in UTC", str(ts)) from None
    # The monitor dead-letters events dated more than UNDERTOW_MAX_CLOCK_SKEW_SECONDS (an hour) ahead of its
    # clock: a local time labelled as UTC is the usual cause, better said here than found in a DLT.
    if max_ahead is not None and utc - datetime.now(UTC) > timedelta(seconds=max_ahead):
        raise _Refused(loc, f"{_format(utc)} is more than {max_ahead:g} s in the future", _format(utc))
    return _format(utc)


def _from_text(text: str, loc: tuple) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise _Refused(loc, f"{text[:80]!r} is not an RFC 3339 timestamp", text[:80]) from None
    if parsed.tzinfo is None or not ("T" in text or "t" in text):
        raise _Refused(loc, f"{text[:80]!r} needs a date, a time and a UTC offset (e.g. 'Z')", text[:80])
    return parsed


def _format(utc: datetime) -> str:
    return utc.isoformat().replace("+00:00", "Z")


def _id(event_id: object) -> object:
    # A uuid.UUID is an id in its canonical text; other values go to the parser as they are.
    return str(event_id) if isinstance(event_id, uuid.UUID) else _native(event_id)


def _version(model_version: object) -> object:
    # Registry versions are strings ("3"); an int version is the same name.
    value = _native(model_version)
    return str(value) if value.__class__ is int else value


# ---------------------------------------------------------------- encoding and the monitor's check


def _encode(event: dict, parse: Callable, max_bytes: int) -> bytes:
    """The record value: compact JSON in UTF-8, accepted by the monitor's parser, else _Refused."""
    try:
        value = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        loc = _unencodable(event)
        raise _Refused(loc, "is not valid Unicode (a lone surrogate)", kind="string_unicode") from None
    except TypeError as exc:  # a value _scalar did not see (an id that is a UUID object, a label list)
        raise _Refused((), str(exc), kind="json_type") from None
    try:
        parse(value, max_bytes)
    except errors.InvalidEvent as exc:
        raise _ParserRefused(_placed(exc.problems, event, len(value), max_bytes)) from None
    return value


class _ParserRefused(Exception):
    def __init__(self, problems: list[dict]):
        super().__init__(problems)
        self.problems = problems


def _placed(problems: list[dict], event: dict, size: int, max_bytes: int) -> list[dict]:
    """The parser's problems; a record too large is named by its largest value (only the error path pays)."""
    placed = []
    for problem in problems:
        if problem["type"] == "event_too_large":
            problem = {
                **problem,
                "loc": _largest(event),
                "msg": f"the event would be {size:,} bytes, over the monitor's max_event_bytes "
                f"({max_bytes:,}); the largest value is this one",
                "input": None,
            }
        placed.append(problem)
    return placed


def _largest(event: dict) -> tuple:
    fields = [((name,), value) for name, value in event.items() if name not in ("features", "scores")]
    for group in ("features", "scores"):
        fields += [((group, name), value) for name, value in (event.get(group) or {}).items()]
    return max(fields, key=lambda item: len(json.dumps(item[1], ensure_ascii=False)) + len(item[0][-1]))[0]


def _unencodable(value: object, loc: tuple = ()) -> tuple:
    """Where in ``value`` a string is that UTF-8 cannot encode (a key or a value)."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return loc
        return ()
    if isinstance(value, dict):
        for key, item in value.items():
            found = _unencodable(key, (*loc, key)) or _unencodable(item, (*loc, key))
            if found:
                return found
    return ()


def _refused_message(call: str, problems: list[dict], rows: int | None) -> str:
    def line(p: dict) -> str:
        loc = p["loc"]
        where = f"row {loc[0]}: " if rows is not None else ""
        path = ".".join(str(part) for part in (loc[1:] if rows is not None else loc)) or "<event>"
        return f"{where}{path}: {p['msg']}"

    bad_rows = len({p["loc"][0] for p in problems}) if rows is not None else 1
    head = f"{call} refused {bad_rows} of {rows} rows" if rows is not None else f"{call} refused the event"
    more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    return f"{head}, nothing was sent: " + "; ".join(line(p) for p in problems[:_SHOWN]) + more


# ---------------------------------------------------------------- the client


class Client:
    """A producer of prediction and label events; a context manager that flushes and closes.

    Safe to share between threads. ``undelivered`` and ``delivered`` count
    records; ``pending`` those sent and not yet acknowledged.

    ``bootstrap_servers``, ``topic_prefix``, ``settings`` and the Kafka
    security keywords: where to write (unset ones from ``UNDERTOW_*``
    variables and ``.env``, as the services read them); ``max_pending``:
    records waiting for the broker before a call waits, at most
    ``max_block`` seconds (also the wait for a topic's metadata), after which
    the rest of the call is counted undelivered; ``delivery_timeout``: how
    long the producer retries a record; ``max_event_bytes`` and
    ``max_clock_skew`` (None: unchecked): set them as the monitor's
    ``UNDERTOW_MAX_EVENT_BYTES`` and ``UNDERTOW_MAX_CLOCK_SKEW_SECONDS``;
    ``spread``: key every record by its event id (a label by its
    prediction's), for models set spread in the registry (``undertow models
    spread``); False (the default) keys by the model id. Match the registry:
    the monitor dead-letters records keyed by event id of a model that is
    not spread. It is an attribute too: a server that learns of a change
    sets ``client.spread``, and each call's records are keyed by the value
    the call began with. Raises BrokerUnavailable when no broker answers,
    ConfigError for a bad setting.
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str] | None = None,
        topic_prefix: str | None = None,
        *,
        settings: Settings | None = None,
        max_pending: int = 100_000,
        max_block: float = 10.0,
        delivery_timeout: float = 60.0,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_clock_skew: float | None = 3600.0,
        spread: bool = False,
        **security: Any,
    ):
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.settings = _settings(settings, bootstrap_servers, topic_prefix, security)
        self.topics = Topics(self.settings.topic_prefix)
        self.max_event_bytes = max_event_bytes
        self.max_clock_skew = max_clock_skew
        self.spread = spread
        self._max_pending = max_pending
        self._max_block = max_block
        self._state = threading.Condition()
        self._pending = self._delivered = self._undelivered = 0
        self._last_log = 0.0
        self._closed = False
        self._producer = _producer(self.settings, max_pending, max_block, delivery_timeout)

    # -- counters

    @property
    def delivered(self) -> int:
        return self._delivered

    @property
    def undelivered(self) -> int:
        return self._undelivered

    @property
    def pending(self) -> int:
        return self._pending

    # -- logging events

    def log_prediction(
        self,
        model_id: str,
        features: Mapping[str, Any],
        prediction: Any,
        *,
        event_id: str | None = None,
        ts: datetime | str | None = None,
        scores: Mapping | Sequence | np.ndarray | None = None,
        classes: Sequence | None = None,
        model_version: str | None = None,
    ) -> str:
        """Validate and send one prediction; its event id (a new uuid4 hex unless given).

        ``features``: name -> number, string or None (NaN counts as None);
        ``scores``: class -> probability, or an array of them with ``classes``.
        """
        self._check_open()
        try:
            event_id, value = self._prediction(
                model_id, features, prediction, event_id, ts, scores, classes, model_version
            )
        except (_Refused, _ParserRefused) as exc:
            problems = _problems(exc)
            raise InvalidEvent(_refused_message("log_prediction", problems, None), problems) from None
        self._send(self.topics.predictions, model_id, [value], [event_id])
        return event_id

    def log_predictions(
        self,
        model_id: str,
        frame: pd.DataFrame | Sequence[Mapping],
        predictions: Iterable,
        *,
        scores: np.ndarray | pd.DataFrame | Sequence | None = None,
        classes: Sequence | None = None,
        event_ids: Sequence[str] | None = None,
        ts: Any = None,
        model_version: str | None = None,
    ) -> list[str]:
        """Validate every row, then send them all; their event ids, in row order.

        ``frame``: a DataFrame (one feature per column) or a list of dicts.
        ``scores``: an array of shape (rows, classes) with ``classes``
        (``model.predict_proba(frame)``, ``model.classes_``), a DataFrame with
        a column per class, or one dict (or None) per row. ``ts``: one time
        for every row or one per row. Any refused row raises InvalidEvent
        naming every refused row and field, and nothing is sent.
        """
        self._check_open()
        rows = _rows(frame)
        n = len(rows)
        columns = {
            "predictions": _listed(predictions, n),
            "scores": _score_rows(scores, classes, n),
            "event_ids": _listed(event_ids, n),
            "ts": _per_row_ts(ts, n),
        }
        ids, values, problems = [], [], []
        for i in range(n):
            try:
                event_id, value = self._prediction(
                    model_id,
                    rows[i],
                    columns["predictions"][i],
                    columns["event_ids"][i],
                    columns["ts"][i],
                    columns["scores"][i],
                    classes,
                    model_version,
                )
            except (_Refused, _ParserRefused) as exc:
                problems += [{**p, "loc": (i, *p["loc"])} for p in _problems(exc)]
                continue
            ids.append(event_id)
            values.append(value)
        if problems:
            raise InvalidEvent(_refused_message("log_predictions", problems, n), problems)
        self._send(self.topics.predictions, model_id, values, ids)
        return ids

    def log_label(self, model_id: str, event_id: str, label: Any, *, ts: datetime | str | None = None) -> None:
        """Validate and send the ground truth of the prediction ``event_id``."""
        self.log_labels(model_id, [event_id], [label], ts=ts, _call="log_label")

    def log_labels(
        self, model_id: str, event_ids: Sequence[str], labels: Iterable, *, ts: Any = None, _call: str = "log_labels"
    ) -> None:
        """Validate every label, then send them all (``ts``: one time, or one per label)."""
        self._check_open()
        if isinstance(event_ids, str):
            raise TypeError("event_ids is one string: give a list of event ids (or use log_label)")
        ids = _listed(event_ids, None)
        n = len(ids)
        values_in, times = _listed(labels, n), _per_row_ts(ts, n)
        values, sent_ids, problems = [], [], []
        for i in range(n):
            try:
                event = {
                    "event_id": _id(ids[i]),
                    "model_id": model_id,
                    "ts": _utc_text(times[i], self.max_clock_skew),
                    "label": _target(("label",), values_in[i]),
                }
                values.append(_encode(event, parse_label, self.max_event_bytes))
                sent_ids.append(event["event_id"])
            except (_Refused, _ParserRefused) as exc:
                problems += [{**p, "loc": (i, *p["loc"])} for p in _problems(exc)]
        if problems:
            single = _call == "log_label"
            if single:
                problems = [{**p, "loc": p["loc"][1:]} for p in problems]
            raise InvalidEvent(_refused_message(_call, problems, None if single else n), problems)
        self._send(self.topics.labels, model_id, values, sent_ids)

    def monitored(self, model: Any, model_id: str, model_version: str | None = None) -> Monitored:
        """``model`` wrapped so that ``predict(X)`` also logs: returns (predictions, event ids)."""
        return Monitored(self, model, model_id, model_version)

    # -- delivery

    def flush(self, timeout: float | None = None) -> int:
        """Wait until every record sent so far is acknowledged or failed; the number undelivered so far.

        Raises TimeoutError when ``timeout`` seconds pass first (the records
        stay pending). Without a timeout it returns within the delivery
        timeout (60 s unless set).
        """
        if self._closed:
            return self._undelivered
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._producer.flush(timeout)
        except KafkaTimeoutError:
            raise TimeoutError(f"{self._pending} records still unacknowledged after {timeout} s") from None
        with self._state:
            # The producer's flush returns once its batches are done; their callbacks may still be running.
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if not self._state.wait_for(lambda: self._pending == 0, left):
                raise TimeoutError(f"{self._pending} records still unacknowledged after {timeout} s")
        return self._undelivered

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush (at most ``timeout`` seconds) and close; says in the log what was not delivered."""
        if self._closed:
            return
        try:
            self.flush(timeout)
        except TimeoutError as exc:
            log.error("closing the Undertow client: %s; they are lost", exc)
        finally:
            self._closed = True
            self._producer.close(timeout=5)
        if self._undelivered:
            log.error(
                "the Undertow client could not deliver %d of %d records",
                self._undelivered,
                self._undelivered + self._delivered,
            )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- internals

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Undertow client is closed")

    def _prediction(
        self, model_id, features, prediction, event_id, ts, scores, classes, model_version
    ) -> tuple[str, bytes]:
        event_id = uuid.uuid4().hex if event_id is None else _id(event_id)
        event = {"event_id": event_id, "model_id": model_id, "ts": _utc_text(ts, self.max_clock_skew)}
        if model_version is not None:
            event["model_version"] = _version(model_version)
        if not isinstance(features, Mapping):
            raise _Refused(
                ("features",), f"must be a mapping of feature names to values, not {type(features).__name__}"
            )
        event["features"] = _features(features)
        event["prediction"] = _target(("prediction",), prediction)
        row_scores = _scores(scores, classes)
        if row_scores is not None:
            event["scores"] = row_scores
        return event_id, _encode(event, parse_prediction, self.max_event_bytes)

    def _send(self, topic: str, model_id: str, values: list[bytes], event_ids: list[str]) -> None:
        key = model_id.encode()  # validated by the parser: the pattern allows ASCII only
        # A spread model's records are keyed by their event id (validated: text without control characters), a
        # label by its prediction's, so the pair meets on one partition of the co-partitioned topics. Read once:
        # a call's records are keyed alike even if another thread changes the setting meanwhile.
        keys = [event_id.encode() for event_id in event_ids] if self.spread else None
        for i, value in enumerate(values):
            if not self._reserve():
                self._lost(
                    topic, len(values) - i, f"{self._max_pending} records waited for the broker for {self._max_block} s"
                )
                return
            try:
                future = self._producer.send(topic, key=key if keys is None else keys[i], value=value)
            except KafkaError as exc:  # metadata missing for max_block, a record over max_request_size
                self._unreserve()
                if isinstance(exc, KafkaTimeoutError):
                    # The next send would wait as long for the same broker: the rest of the call is lost too.
                    self._lost(topic, len(values) - i, str(exc))
                    return
                self._lost(topic, 1, str(exc))
                continue
            future.add_callback(self._acknowledged)
            future.add_errback(self._failed, topic)

    def _reserve(self) -> bool:
        with self._state:
            if not self._state.wait_for(lambda: self._pending < self._max_pending, self._max_block):
                return False
            self._pending += 1
            return True

    def _unreserve(self) -> None:
        with self._state:
            self._pending -= 1
            self._state.notify_all()

    def _acknowledged(self, _metadata) -> None:  # the producer's I/O thread
        with self._state:
            self._pending -= 1
            self._delivered += 1
            self._state.notify_all()

    def _failed(self, topic: str, exc: Exception) -> None:  # the producer's I/O thread
        self._unreserve()
        self._lost(topic, 1, str(exc))

    def _lost(self, topic: str, count: int, reason: str) -> None:
        with self._state:
            self._undelivered += count
            now = time.monotonic()
            # A broker outage fails thousands of records: one line a second.
            if now - self._last_log < 1.0:
                return
            self._last_log = now
            total = self._undelivered
        log.error(
            "Undertow client: %d records to %s not delivered (%s); %d undelivered so far", count, topic, reason, total
        )


class Monitored:
    """A model whose ``predict`` logs each prediction (batch scoring); scores from ``predict_proba`` when the
    model has classes."""

    def __init__(self, client: Client, model: Any, model_id: str, model_version: str | None = None):
        self.client, self.model, self.model_id, self.model_version = client, model, model_id, model_version

    def predict(self, X) -> tuple[np.ndarray, list[str]]:
        if not isinstance(X, pd.DataFrame):
            names = getattr(self.model, "feature_names_in_", None)
            if names is None:
                raise ValueError("give X as a DataFrame: events name their features")
            X = pd.DataFrame(np.asarray(X), columns=list(names))
        predictions = self.model.predict(X)
        classes = getattr(self.model, "classes_", None)
        scores = self.model.predict_proba(X) if classes is not None and hasattr(self.model, "predict_proba") else None
        ids = self.client.log_predictions(
            self.model_id, X, predictions, scores=scores, classes=classes, model_version=self.model_version
        )
        return predictions, ids


# ---------------------------------------------------------------- helpers of the client


def _settings(settings: Settings | None, bootstrap_servers, topic_prefix, security: dict) -> Settings:
    unknown = sorted(set(security) - _SECURITY)
    if unknown:
        raise TypeError(f"Client() got unexpected keyword arguments {unknown}; Kafka options: {sorted(_SECURITY)}")
    values = {} if settings is None else settings.model_dump()
    values.update({f"kafka_{name}": value for name, value in security.items()})
    if bootstrap_servers is not None:
        values["kafka_bootstrap_servers"] = (
            bootstrap_servers if isinstance(bootstrap_servers, str) else ",".join(bootstrap_servers)
        )
    if topic_prefix is not None:
        values["topic_prefix"] = topic_prefix
    return load_settings(values, Settings)


def _producer(settings: Settings, max_pending: int, max_block: float, delivery_timeout: float) -> KafkaProducer:
    # As the serving endpoint's producer (transport.make_event_producer): not idempotent (a memory-only broker
    # that restarts would fail an idempotent producer for good), and an in-flight limit above max_pending so
    # kafka-python 3's sender never busy-loops at it while the broker stalls. No topic creation: a typo in the
    # prefix would otherwise make topics nobody reads; `undertow topics create` (or the services) make the real ones.
    # First a plain connection to the bootstrap servers: with none answering, the client would retry for half
    # a minute, whatever max_block says, before giving up.
    unreachable = unreachable_broker(settings.kafka_bootstrap_servers, min(max_block, 4.0))
    if unreachable is not None:
        raise BrokerUnavailable(f"no Kafka broker reachable at {settings.kafka_bootstrap_servers} ({unreachable})")
    try:
        return KafkaProducer(
            **client_options(settings),
            client_id="undertow-client",
            acks="all",
            linger_ms=5,
            enable_idempotence=False,
            max_in_flight_requests_per_connection=max_pending + 1,
            max_block_ms=int(max_block * 1000),
            request_timeout_ms=int(min(10.0, delivery_timeout / 2) * 1000),
            delivery_timeout_ms=int(delivery_timeout * 1000),
            reconnect_backoff_max_ms=1000,
            allow_auto_create_topics=False,
        )
    except KafkaTimeoutError:
        raise BrokerUnavailable(f"no Kafka broker reachable at {settings.kafka_bootstrap_servers}") from None


def _problems(exc: Exception) -> list[dict]:
    return [exc.problem] if isinstance(exc, _Refused) else exc.problems


def _rows(frame: pd.DataFrame | Sequence[Mapping]) -> list[Mapping]:
    """Rows as dicts; a DataFrame column by column (tolist gives Python scalars, isna finds NaN/None/NA)."""
    if not isinstance(frame, pd.DataFrame):
        return list(frame)
    columns = {}
    for name in frame.columns:
        series = frame[name]
        values = series.tolist()
        missing = series.isna().to_numpy()
        if missing.any():
            values = [None if gone else value for value, gone in zip(values, missing)]
        columns[name] = values
    names = list(columns)
    return [dict(zip(names, row)) for row in zip(*columns.values())] if names else [{} for _ in range(len(frame))]


def _listed(values: Iterable | None, n: int | None) -> list:
    """``values`` as a list of ``n`` (None: n Nones); a length that does not match is the caller's mistake."""
    if values is None:
        return [None] * (n or 0)
    listed = values.tolist() if hasattr(values, "tolist") else list(values)
    if n is not None and len(listed) != n:
        raise ValueError(f"{len(listed)} values for {n} rows")
    return listed


def _per_row_ts(ts: Any, n: int) -> list:
    if ts is None or isinstance(ts, (str, datetime)):
        return [ts] * n
    listed = list(ts)  # a DatetimeIndex or Series keeps its Timestamps (tolist would too)
    if len(listed) != n:
        raise ValueError(f"{len(listed)} timestamps for {n} rows")
    return listed


def _score_rows(scores: Any, classes: Sequence | None, n: int) -> list:
    """One scores entry per row: a row of an array (with ``classes``), a DataFrame row, a dict or None."""
    if scores is None:
        return [None] * n
    if isinstance(scores, pd.DataFrame):
        columns = list(scores.columns)
        return [dict(zip(columns, row)) for row in scores.itertuples(index=False, name=None)]
    if isinstance(scores, np.ndarray):
        if scores.ndim != 2 or scores.shape[0] != n:
            raise ValueError(f"scores must have shape (rows, classes) = ({n}, k), not {scores.shape}")
        if classes is None:
            raise ValueError("scores as an array need the classes (e.g. classes=model.classes_)")
        return list(scores)
    return _listed(scores, n)
