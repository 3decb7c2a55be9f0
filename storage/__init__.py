"""Persistence only: tables, engine, schema migrations and repository functions.

Nothing here imports ``worker`` or ``models``. Repository functions take a
``Session`` and never commit: the caller owns the transaction.
"""
