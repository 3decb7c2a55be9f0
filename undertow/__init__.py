"""Undertow: a drift monitor for models in production.

The one name the distribution installs. The code lives in three folders at
the top of the repository, installed under this name (``package-dir`` in
``pyproject.toml``): ``undertow.worker`` (the processes: monitor, trainer,
server, CLI), ``undertow.models`` (the ML lifecycle and the drift domain)
and ``undertow.storage`` (persistence).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("undertow")
except PackageNotFoundError:  # run from a checkout without installing
    __version__ = "0+unknown"
