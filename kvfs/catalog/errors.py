"""The exceptions the catalog raises: callers outside `kvfs/catalog/` catch these, never a driver's."""

from __future__ import annotations


class CatalogError(Exception):
    """A one-line, user-readable reason; the CLI prints it without a traceback."""


class RootMismatchError(CatalogError):
    """The catalog records another root than the one it was opened for: using it would drop that root's rows."""


class CatalogUnavailable(CatalogError):
    """The database failed a statement (unreachable, locked, read-only, a broken table): the driver's error,
    counted in `kvfs_catalog_errors_total{op}` and re-raised as this, so callers need no SQL library."""

    def __init__(self, reason: str, *, op: str | None = None, detail: str | None = None) -> None:
        super().__init__(reason)
        self.op = op
        self.detail = reason if detail is None else detail  # the driver's own words

    @classmethod
    def of(cls, op: str, exc: BaseException) -> CatalogUnavailable:
        """From a driver or SQLAlchemy error: its first line (SQLAlchemy appends SQL and a link after it)."""
        orig = getattr(exc, "orig", None) or exc
        text = str(orig).strip()
        first = text.splitlines()[0] if text else type(orig).__name__
        return cls(f"catalog {op} failed: {first}", op=op, detail=first)
