"""`kvfs verify`: read and check every kvfs block file."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from kvfs.cli.app import KvfsContext, pass_state
from kvfs.cli.output import emit_json, size, table
from kvfs.layout import META_DIRNAME, parse_namespace_dir
from kvfs.verify import DEFAULT_THREADS, verify_tree


class _Counter:
    """A one-line running count on stderr (the total is unknown until the walk ends)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, n: int) -> None:
        self.count += n
        click.echo(f"\rverifying: {self.count:,} files", nl=False, err=True)

    def done(self) -> None:
        if self.count:
            click.echo(err=True)


@click.command()
@click.option("--namespace", metavar="NS", help="Check one namespace only.")
@click.option(
    "--delete-corrupt",
    is_flag=True,
    help="Delete corrupt files (root-confined, no symlinks) and remove their catalog rows.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=DEFAULT_THREADS,
    show_default=True,
    help="Parallel readers.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def verify(
    state: KvfsContext, namespace: str | None, delete_corrupt: bool, threads: int, as_json: bool
) -> None:
    """Read every kvfs block file under the root and check header, fingerprint and payload checksum.

    Walks the tree (not the catalog), so unscanned files are checked too.  Exits with status 1 when corrupt
    files remain (found and not deleted) or something could not be read (unreadable files and directories are
    reported, never deleted: an unreadable file is not proven corrupt).  Stock `.bin` files have no header: they are counted, not checked.
    """
    root = state.require_root()
    if namespace is not None:
        # A misspelt namespace would check nothing and pass ("checked 0 files"): refuse it like gc and ls do.
        known = sorted(_namespaces_in_tree(root))
        if namespace not in known:
            raise click.BadParameter(
                f"unknown namespace {namespace!r} under {root} (known: {', '.join(known) or 'none'})",
                param_hint="'--namespace'",
            )
    catalog = state.catalog() if delete_corrupt else None
    progress = _Counter() if not as_json and sys.stderr.isatty() else None
    result = verify_tree(
        root,
        namespace=namespace,
        threads=threads,
        delete_corrupt=delete_corrupt,
        catalog=catalog,
        progress=progress,
    )
    if progress is not None:
        progress.done()
    remaining = len(result.corrupt) - result.deleted + len(result.unreadable)
    if as_json:
        emit_json(result.to_json())
    else:
        if result.corrupt:
            rows = [(c.path, c.reason, size(c.size)) for c in result.corrupt]
            click.echo(table(("corrupt file", "reason", "size"), rows, right=(2,)))
        if result.unreadable:
            rows = [(c.path, c.reason) for c in result.unreadable]
            click.echo(table(("unreadable (not checked, never deleted)", "reason"), rows))
        rate = result.checked_bytes / result.duration_s / 1e6 if result.duration_s > 0 else 0.0
        click.echo(
            f"checked {result.checked:,} kvfs files ({size(result.checked_bytes)}) in {result.duration_s:.2f}s "
            f"({rate:,.0f} MB/s); {len(result.corrupt):,} corrupt"
            + (f", {result.deleted:,} deleted" if delete_corrupt else "")
            + (f"; {len(result.unreadable):,} unreadable" if result.unreadable else "")
            + (f"; {result.bin_files:,} .bin files not checked" if result.bin_files else "")
        )
    if remaining > 0:
        sys.exit(1)


def _namespaces_in_tree(root: Path) -> set[str]:
    names: set[str] = set()
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name != META_DIRNAME and entry.is_dir(follow_symlinks=False):
                parsed = parse_namespace_dir(entry.name)
                if parsed is not None:
                    names.add(parsed[0])
    return names
