"""Kept for compatibility: the errors live in ``undertow.errors``; import them from there."""

from undertow.errors import (
    ArtifactIntegrityError,
    ConfigError,
    InvalidEvent,
    NotFound,
    StaleOffsets,
    UndertowError,
)

__all__ = ["ArtifactIntegrityError", "ConfigError", "InvalidEvent", "NotFound", "StaleOffsets", "UndertowError"]
