"""The one exception the catalog raises for user-facing problems (bad URL, unreachable DB, unsafe location)."""

from __future__ import annotations


class CatalogError(Exception):
    """A one-line, user-readable reason; the CLI prints it without a traceback."""


class RootMismatchError(CatalogError):
    """The catalog records another root than the one it was opened for: using it would drop that root's rows."""
