"""The one pattern for model ids and versions, shared by events and the registry.

Ids become Kafka keys, SQL values and artifact path components, so they are
restricted to what is safe in all three: a letter or digit, then letters,
digits, ``.``, ``_`` or ``-``, at most 128 characters in all. No separators,
no ``..`` as a whole component, no control characters.
"""

from __future__ import annotations

import re

from undertow.errors import UndertowError

MODEL_ID_MAX_LENGTH = 128
MODEL_ID_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{MODEL_ID_MAX_LENGTH - 1}}}$"
_MODEL_ID = re.compile(MODEL_ID_PATTERN)


class InvalidId(UndertowError, ValueError):
    """A model id or version that does not follow MODEL_ID_PATTERN."""


def check_id(value: str, what: str = "model id") -> str:
    """Return ``value`` if it is a valid model id or version, else raise InvalidId.

    >>> check_id("housing-v2.1")
    'housing-v2.1'
    >>> check_id("../evil")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    undertow.models.ids.InvalidId: model id '../evil' must start with a letter or digit and hold only ... characters)
    """
    if not isinstance(value, str) or not _MODEL_ID.fullmatch(value):
        raise InvalidId(
            f"{what} {value!r} must start with a letter or digit and hold only letters, digits, "
            f"'.', '_' and '-' (at most {MODEL_ID_MAX_LENGTH} characters)"
        )
    return value
