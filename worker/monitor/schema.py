"""The schema stage: predictions whose features do not match their version's registered schema.

A producer that renames a feature, sends ``"12"`` for a number or adds a
feature would otherwise be monitored as if the feature were missing, with
nothing to say why: the HTTP endpoint refuses such rows with 422, and the
event path now at least counts them, per model and reason, and says so.
"""

from __future__ import annotations

import collections
import difflib
import itertools
import json
import logging
import operator
import time
from collections.abc import Callable, KeysView
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from undertow.errors import InvalidEvent
from undertow.models import registry
from undertow.models.drift.config import DriftConfig
from undertow.models.label_kinds import LabelKind
from undertow.storage import repo
from undertow.worker.monitor.model_events import batch_champions, batch_prediction_groups
from undertow.worker.runtime.batch import Batch
from undertow.worker.runtime.checkpoint import store_dead_letter
from undertow.worker.runtime.events import LabelEvent
from undertow.worker.runtime.transport import dead_letter

log = logging.getLogger(__name__)

MISSING, EXTRA, TYPE = "missing", "extra", "type"  # SchemaMismatch.reason of predictions
REASONS = (MISSING, EXTRA, TYPE)
LABEL = "label"  # SchemaMismatch.reason of labels that cannot be right for the model (``models.label_kinds``)
# Batch.shared key: the (model id, version) groups whose predictions all match the schema (numeric features
# hold numbers or nulls): the data-drift stage then skips its own type check of them.
NUMBERS_ONLY = "schema_numbers_only"
NUMBER_TYPES = frozenset({int, float, type(None)})  # what a numeric feature may hold (None: a missing value)


@dataclass(frozen=True)
class VersionSchema:
    """The features a version was registered with, and whether a mismatch is dead-lettered.

    >>> s = VersionSchema("1", {"x": 0, "c": 0}.keys(), ("x",), strict=False)
    >>> s.mismatched([{"x": 1.0, "c": "a"}, {"x": "12", "c": "a"}, {"y": 1.0, "c": "a"}])
    [1, 2]
    >>> s.faults({"y": 1.0, "c": "a"}), s.faults({"x": "12", "c": "a"})
    ({'missing': ['x'], 'extra': ['y']}, {'type': ['x']})
    """

    version: str
    names: KeysView  # compared with each event's features' keys (dict views compare as sets, in C)
    numeric: tuple[str, ...]
    strict: bool
    # A row's numeric values as a tuple (the name twice when there is one: itemgetter then gives a tuple too).
    _numeric_values: Callable[[dict], tuple] | None = field(init=False, repr=False, compare=False)
    # The other features' values (a KeyError if one is missing): with the numeric getter and the rows' sizes
    # it compares a row's keys with the schema's in C without dict_keys.__eq__, 3 times the cost.
    _other_values: Callable[[dict], object] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_numeric_values", _getter(self.numeric))
        object.__setattr__(self, "_other_values", _getter(tuple(n for n in self.names if n not in self.numeric)))

    @classmethod
    def of(cls, row: registry.ModelVersion) -> VersionSchema:
        # Columns such as __prediction__ are profiled for drift, not sent as features (as the server reads it).
        kinds = {
            name: kind for name, kind in json.loads(row.feature_schema or "{}").items() if not name.startswith("__")
        }
        strict = DriftConfig.model_validate_json(row.drift_config).strict_schema
        return cls(row.version, kinds.keys(), tuple(n for n, kind in kinds.items() if kind == "numeric"), strict)

    def mismatched(self, rows: list[dict]) -> list[int]:
        """Indices of the rows that do not match: C-level passes over the rows (``_all_match``); when some
        row is at fault, per row a key comparison and per numeric feature a pass over the values' types,
        Python per row only for the rows at fault."""
        if self._all_match(rows):
            return []  # the common case: passes in C
        same_keys = list(map(self.names.__eq__, map(dict.keys, rows)))
        bad = {i for i, same in enumerate(same_keys) if not same}
        for name in self.numeric:
            values = [row.get(name) for row in rows]
            if not NUMBER_TYPES.issuperset(map(type, values)):
                bad.update(i for i, v in enumerate(values) if v.__class__ not in NUMBER_TYPES)
        return sorted(bad)

    def _all_match(self, rows: list[dict]) -> bool:
        """Whether every row has the schema's keys and numbers (or nulls) in its numeric features: a row of
        the schema's size that has each of its names has its keys (a dict's keys are distinct)."""
        size = len(self.names)
        if not all(map(size.__eq__, map(len, rows))):
            return False
        try:
            if self._other_values is not None:
                collections.deque(map(self._other_values, rows), maxlen=0)
            getter = self._numeric_values
            return getter is None or NUMBER_TYPES.issuperset(
                map(type, itertools.chain.from_iterable(map(getter, rows)))
            )
        except KeyError:  # a feature missing
            return False

    def faults(self, features: dict) -> dict[str, list[str]]:
        """Per reason, the features at fault (in schema order, then the event's)."""
        found = {
            MISSING: [n for n in self.names if n not in features],
            EXTRA: [n for n in features if n not in self.names],
            TYPE: [n for n in self.numeric if features.get(n).__class__ not in NUMBER_TYPES],
        }
        return {reason: names for reason, names in found.items() if names}


def _getter(names: tuple[str, ...]) -> Callable[[dict], tuple] | None:
    """A row's values of ``names`` as a tuple (the name twice when there is one: itemgetter then gives a
    tuple too); None without names."""
    return operator.itemgetter(*names * (2 if len(names) == 1 else 1)) if names else None


def describe(model_id: str, version: str, faults: dict[str, list[str]], features: dict) -> str:
    """One line: what is wrong with a prediction's features, a renamed feature suggested."""
    parts = []
    missing, extra = faults.get(MISSING, []), faults.get(EXTRA, [])
    for name in missing:
        # One feature gone and one new: most likely renamed, however different the names look.
        like = extra if len(missing) == len(extra) == 1 else difflib.get_close_matches(name, extra, n=1, cutoff=0.6)
        parts.append(f"feature {name!r} missing" + (f" (renamed to {like[0]!r}?)" if like else ""))
    if faults.get(EXTRA):
        parts.append(
            "not in the schema: "
            + ", ".join(map(repr, faults[EXTRA][:5]))
            + (f" and {len(faults[EXTRA]) - 5} more" if len(faults[EXTRA]) > 5 else "")
        )
    for name in faults.get(TYPE, []):
        parts.append(f"numeric feature {name!r} sent as {type(features[name]).__name__} {str(features[name])[:40]!r}")
    return f"model {model_id!r} version {version}: " + "; ".join(parts)


class SchemaStage:
    """Counts predictions whose features do not match their version's schema, and dead-letters them
    for versions registered with ``--strict-schema``.

    Steps, per batch:

    1. Group the predictions by model version (the event's, else the
       champion's: ``batch_prediction_groups``, shared with the data-drift
       stage); versions without a registration are skipped (the
       registration stage has taken unregistered model ids out already).
    2. Find the predictions whose features differ from the version's: a
       feature missing, one the schema does not have, a string where the
       schema has a number (``null`` is a missing value, not a mismatch).
    3. Count them per model and reason in ``schema_mismatches`` (a
       prediction with several faults counts under each), and warn at most
       once per model and reason per ``warn_interval_seconds``, naming the
       feature.
    4. Strict versions: take those predictions out of the batch and put
       them on the dead-letter topic (stage ``schema``). This runs before the
       ingest stage, so a refused prediction is neither counted nor
       remembered as seen: sent again corrected, with the same event id, it
       is taken. The others stay and are monitored with what they have (a
       missing or mistyped feature counts as a missing value).
    5. Labels that cannot be right for their model's champion (text for a
       regression, or a class of the other kind: ``models.label_kinds``): counted
       under reason ``label`` and always dead-lettered, since each would be
       scored a misclassification and raise a false concept drift. Their
       predictions go on waiting: a corrected label with the same event id
       joins them.
    """

    def __init__(self, warn_interval_seconds: float = 3600.0, clock: Callable[[], float] = time.time):
        if warn_interval_seconds <= 0:
            raise ValueError("warn_interval_seconds must be positive")
        self.warn_interval_seconds = warn_interval_seconds
        self.clock = clock
        self._versions: dict[tuple[str, str], tuple[VersionSchema, LabelKind | None] | None] = {}
        self._warned: dict[tuple[str, str], float] = {}

    def reset(self) -> None:
        self._versions.clear()

    def apply(self, session: Session, batch: Batch) -> None:
        groups = batch_prediction_groups(session, batch)
        numbers_only = batch.shared[NUMBERS_ONLY] = set()
        refused: set[int] = set()  # id() of the events dead-lettered
        tallies: list[repo.MismatchCount] = []
        for key, items in groups.items():
            schema = self._schema(session, *key)
            if schema is None:
                continue
            bad = schema.mismatched([event.features for _, event in items])
            if not bad:
                numbers_only.add(key)
                continue
            tallies += self._tally(session, batch, key[0], schema, [items[j] for j in bad], refused)
            if schema.strict:
                groups[key] = [item for item in items if id(item[1]) not in refused]
        tallies += self._refuse_labels(session, batch, refused)
        if tallies:
            repo.add_schema_mismatches(session, tallies, self.clock())
        if refused:
            batch.events = [item for item in batch.events if id(item[1]) not in refused]

    def _version(self, session: Session, model_id: str, version: str) -> tuple[VersionSchema, LabelKind | None] | None:
        """A registered version's schema and label kind, read once (None: not registered)."""
        key = (model_id, version)
        if key not in self._versions:
            row = registry.find_version(session, *key)
            self._versions[key] = None if row is None else (VersionSchema.of(row), LabelKind.of(row))
        return self._versions[key]

    def _schema(self, session: Session, model_id: str, version: str) -> VersionSchema | None:
        found = self._version(session, model_id, version)
        return None if found is None else found[0]

    def _label_kind(self, session: Session, model_id: str, version: str) -> LabelKind | None:
        found = self._version(session, model_id, version)
        return None if found is None else found[1]

    def _refuse_labels(self, session: Session, batch: Batch, refused: set[int]) -> list[repo.MismatchCount]:
        """Step 5: the labels that cannot be right for their model's champion, dead-lettered and counted."""
        champions = batch_champions(session, batch)
        kinds: dict[str, LabelKind | None] = {}
        bad: dict[str, list] = {}
        for item in batch.events:
            event = item[1]
            if event.__class__ is not LabelEvent:
                continue
            model_id = event.model_id
            if model_id not in kinds:
                champion = champions.get(model_id)
                kinds[model_id] = None if champion is None else self._label_kind(session, model_id, champion)
            kind = kinds[model_id]
            if kind is not None and not kind.fits(event.label):
                bad.setdefault(model_id, []).append(item)
        tallies = []
        for model_id, items in bad.items():
            kind = kinds[model_id]
            assert kind is not None  # only labels with a kind were refused
            for position, event in items:
                letter = dead_letter(position, "schema", InvalidEvent(kind.describe(model_id, event.label)))
                store_dead_letter(session, letter)
                batch.dead_letters.append(letter)
                refused.add(id(event))
            newest = items[-1][1].label
            tallies.append(
                repo.MismatchCount(model_id, LABEL, kind.version, repr(newest)[:200], len(items), len(items))
            )
            self._warn_labels(model_id, kind.describe(model_id, newest), len(items))
        return tallies

    def _warn_labels(self, model_id: str, example: str, count: int) -> None:
        now = self.clock()
        if now - self._warned.get((model_id, LABEL), -self.warn_interval_seconds) < self.warn_interval_seconds:
            return
        self._warned[(model_id, LABEL)] = now
        log.warning(
            "%s; labels in this batch refused so: %d, dead-lettered (their predictions wait for a corrected "
            "label). `undertow status` counts them; next warning in %g s at the earliest",
            example,
            count,
            self.warn_interval_seconds,
        )

    def _tally(
        self, session: Session, batch: Batch, model_id: str, schema: VersionSchema, items: list, refused: set[int]
    ) -> list[repo.MismatchCount]:
        counts: dict[str, list] = {}  # reason -> [predictions, feature of the newest]
        examples: dict[str, str] = {}  # reason -> the description of its first prediction, for the warning
        for position, event in items:
            faults = schema.faults(event.features)
            for reason, names in faults.items():
                entry = counts.setdefault(reason, [0, names[0]])
                entry[0] += 1
                entry[1] = names[0]
                if reason not in examples:
                    examples[reason] = describe(model_id, schema.version, faults, event.features)
            if schema.strict:
                error = InvalidEvent(
                    describe(model_id, schema.version, faults, event.features)
                    + " (the version was registered with --strict-schema)"
                )
                letter = dead_letter(position, "schema", error)
                store_dead_letter(session, letter)
                batch.dead_letters.append(letter)  # counted by the service metrics like the validator's
                refused.add(id(event))
        self._warn(model_id, schema, {r: c[0] for r, c in counts.items()}, examples)
        return [
            repo.MismatchCount(model_id, reason, schema.version, feature, n, n if schema.strict else 0)
            for reason, (n, feature) in counts.items()
        ]

    def _warn(self, model_id: str, schema: VersionSchema, counts: dict[str, int], examples: dict[str, str]) -> None:
        now = self.clock()
        due = [
            r
            for r in REASONS
            if r in counts
            and now - self._warned.get((model_id, r), -self.warn_interval_seconds) >= self.warn_interval_seconds
        ]
        if not due:
            return
        for reason in due:
            self._warned[(model_id, reason)] = now
        fate = (
            "dead-lettered (strict schema)"
            if schema.strict
            else "monitored with what matches (a missing or mistyped feature counts as missing; register the "
            "version with --strict-schema to dead-letter them)"
        )
        tally = ", ".join(f"{counts[r]} {r}" for r in due)
        example = " | ".join(dict.fromkeys(examples[r] for r in due))  # a prediction with several faults once
        log.warning(
            "schema mismatch: %s; predictions in this batch: %s; %s. `undertow status` counts them; next "
            "warning for these in %g s at the earliest",
            example,
            tally,
            fate,
            self.warn_interval_seconds,
        )
