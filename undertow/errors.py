"""Undertow's exception hierarchy.

A module of its own at the top of the package, outside the layers: every
layer (storage, models, worker) and the client raise the same small set of
errors, and it imports nothing of Undertow's.
"""


class UndertowError(Exception):
    """Base class of every error Undertow raises on purpose."""


class ConfigError(UndertowError):
    """A setting is missing or malformed; the message is one line for the user."""


class InvalidEvent(UndertowError):
    """An input record breaks the event contract; it goes to the dead-letter topic."""


class StaleOffsets(UndertowError):
    """The stored offsets moved under us: another monitor owns the partition now.

    The batch is rolled back and the consumer seeks to the stored offsets again.
    """


class ArtifactIntegrityError(UndertowError):
    """An artifact's bytes do not match the SHA-256 recorded in the registry."""


class NotFound(UndertowError):
    """A model, version or request that the caller named does not exist."""
