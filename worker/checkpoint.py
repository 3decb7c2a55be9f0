"""The checkpoint: the one object that owns the commit of a batch."""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from sqlalchemy.orm import Session, sessionmaker

from storage import repo
from worker.batch import Batch
from worker.transport import OutboxRelay

log = logging.getLogger(__name__)


class Checkpoint:
    """Commits a processed batch so that its effects happen exactly once.

    Steps, in this order:

    1. One database transaction: ``apply`` writes the new state and any outbox
       rows (dead letters, alerts, retrain requests), then the next offset of
       every partition in the batch is compare-and-set from the offset this
       consumer last stored. Either all of it commits or none of it.
    2. The same offsets are committed to Kafka, only so that standard lag
       tools show progress; they are never read back. Failure is logged.
    3. The outbox is published; rows are deleted once the broker acknowledged.

    A crash before (1) commits replays the batch from the stored offsets; a
    crash after it re-sends unpublished outbox rows with the same ids.
    """

    def __init__(self, sessions: sessionmaker[Session], consumer: KafkaConsumer, group_id: str,
                 relay: OutboxRelay):
        self._sessions = sessions
        self._consumer = consumer
        self._group_id = group_id
        self._relay = relay

    def commit(self, batch: Batch, expected: Mapping[tuple[str, int], int | None],
               apply: Callable[[Session, Batch], None]) -> None:
        moves = {tp: (expected.get(tp), offset) for tp, offset in batch.next_offsets.items()}
        with self._sessions.begin() as session:
            apply(session, batch)
            repo.advance_offsets(session, self._group_id, moves)
        try:
            self._consumer.commit({TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                                   for (t, p), o in batch.next_offsets.items()})
        except KafkaError as exc:
            log.info("informational Kafka offset commit failed (database offsets are the truth): %s", exc)
        self._relay.publish_pending()
