"""`kvfs gc`: one eviction pass, the one the evictor runs (`kvfs.eviction.run_pass`), with its settings' quotas."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from kvfs.cli.app import KvfsContext, pass_state
from kvfs.cli.output import emit_json, size, table
from kvfs.cli.params import DURATION, SIZE, PolicyOption
from kvfs.cli.scan import remove_journals_option, run_scan, scan_json
from kvfs.eviction import PassHooks, Plan, Result, limits_for_command, run_pass
from kvfs.eviction.ingest import ingest_journals
from kvfs.policy import DEFAULT_POLICY, available_policies, get_policy
from kvfs.scanstate import record_temp_files


def _print_plan(plan: Plan, result: Result) -> None:
    if not plan.total_files:
        click.echo(
            f"nothing to evict: {plan.usage_files:,} files, {size(plan.usage_bytes)} in scope "
            f"({plan.policy} order)"
        )
        return
    click.echo(
        f"plan ({plan.policy} order): {plan.total_files:,} files, {size(plan.total_bytes)} "
        f"of {plan.usage_files:,} files, {size(plan.usage_bytes)}"
    )
    reason_rows = [(str(r), f"{t.files:,}", size(t.bytes)) for r, t in plan.by_reason.items()]
    click.echo(table(("reason", "files", "bytes"), reason_rows, right=(1, 2)))
    ns_rows = [
        (ns or "(outside namespaces)", f"{t.files:,}", size(t.bytes)) for ns, t in plan.by_namespace.items()
    ]
    click.echo(table(("namespace", "files", "bytes"), ns_rows, right=(1, 2)))
    if result.dry_run:
        click.echo("dry run: nothing deleted")
        return
    line = f"deleted {result.deleted_files:,} files, {size(result.deleted_bytes)} in {result.duration_s:.2f}s"
    extras = [
        f"{n:,} {what}"
        for n, what in (
            (result.skipped_recently_used, "spared (used since planning)"),
            (result.missing, "already gone"),
            (result.refused, "refused (unsafe path)"),
            (result.errors, "failed"),
        )
        if n
    ]
    click.echo(line + (f"; {', '.join(extras)}" if extras else ""))


@click.command()
@click.option("--dry-run", is_flag=True, help="Show the plan; delete nothing.")
@click.option(
    "--max-bytes", type=SIZE, help="Capacity: evict in policy order until usage <= SIZE (500GiB, 10G)."
)
@click.option("--ttl", type=DURATION, help="Evict blocks not accessed for DURATION (30s, 10m, 2h, 7d).")
@click.option(
    "--namespace", "namespace", metavar="NS", help="Limit the pass (and --max-bytes) to one namespace."
)
@click.option(
    "--retire", multiple=True, metavar="NS", help="Delete every block of namespace NS (repeatable)."
)
@click.option(
    "--orphans-older-than",
    type=DURATION,
    help="Delete temp files (*.tmp) older than DURATION (scans the tree to find them).",
)
@click.option(
    "--min-age",
    type=DURATION,
    default="0s",
    show_default=True,
    help="Never touch blocks accessed or created more recently than this.",
)
@click.option(
    "--policy",
    cls=PolicyOption,
    default=DEFAULT_POLICY,
    show_default=True,
    help="Eviction order (kvfs.policy).",
)
@click.option(
    "--scan/--no-scan",
    "scan_first",
    default=None,
    help="Reconcile the catalog with the tree first [default: only when the catalog is empty or "
    "--orphans-older-than is given].",
)
@remove_journals_option
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    envvar="KVFS_CONFIG",
    help="The evictor's config file: its quotas and retired namespaces apply (as do KVFS_QUOTAS and "
    "KVFS_RETIRE) [env: KVFS_CONFIG].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def gc(
    state: KvfsContext,
    dry_run: bool,
    max_bytes: int | None,
    ttl: float | None,
    namespace: str | None,
    retire: tuple[str, ...],
    orphans_older_than: float | None,
    min_age: float,
    policy: str,
    scan_first: bool | None,
    remove_journals: bool,
    config: str | None,
    as_json: bool,
) -> None:
    """Run one eviction pass: retired namespaces, TTL, quotas, capacity (--max-bytes), old temp files.

    Plans from the catalog in policy order, exactly as the evictor does, after ingesting pending journal
    records so recency is current; then deletes (unless --dry-run) through root-confined, symlink-refusing
    unlinks, removes the rows and logs the pass.  The evictor's quotas and retired namespaces apply too: from
    its settings (--config / KVFS_CONFIG, KVFS_QUOTAS, KVFS_RETIRE), so gc and the evictor enforce the same ones.
    """
    if policy not in available_policies():
        raise click.BadParameter(
            f"unknown policy {policy!r} (available: {', '.join(available_policies())})",
            param_hint="'--policy'",
        )
    settings = _settings(state, config)
    root = state.require_root()
    catalog = state.catalog()
    # A dry run changes nothing on the mount: journal segments stay even with --remove-journals.
    ingested = ingest_journals(root, catalog, remove_finished=remove_journals and not dry_run)
    if scan_first is None:
        scan_first = orphans_older_than is not None or catalog.block_count() == 0
    temp_files: list[Any] = []
    scanned: dict[str, Any] | None = None
    if scan_first:
        scan_result = run_scan(state, quiet=as_json)
        scanned = scan_json(scan_result)
        temp_files = list(scan_result.temp_files)
    # A name typed on the command line must exist (a typo is an error, as for --namespace); names from the
    # settings are skipped and reported instead, as the evictor does, so one stale entry stops no pass.
    known = {ns.name for ns in catalog.namespaces()}
    typos = [name for name in retire if name not in known]
    if typos:
        raise click.BadParameter(
            f"unknown namespace {typos[0]!r} (not in the catalog: run `kvfs scan` first?)",
            param_hint="'--retire'",
        )
    limits = limits_for_command(
        settings,
        max_bytes=max_bytes,
        ttl=ttl,
        min_age=min_age,
        temp_grace=orphans_older_than,
        retire=retire,
        namespace=namespace,
    )
    outcome = run_pass(
        catalog,
        root,
        limits,
        get_policy(policy),
        hooks=PassHooks(ingest=lambda: ingest_journals(root, catalog)),
        temp_files=temp_files,
        dry_run=dry_run,
        ingest_first=False,  # ingested above (with --remove-journals); the hook serves the rechecks
    )
    plan = outcome.plan
    result = outcome.result or Result(0, 0, {}, 0, dry_run)
    if scanned is not None and plan.temp_files and not dry_run:
        # du reports the last scan's temp files: take out the ones this pass deleted.
        record_temp_files(catalog, [t for t in temp_files if os.path.lexists(root / t.relpath)])
    if as_json:
        emit_json(
            {
                **result.to_json(),
                "plan": plan.to_json(),
                "journal_records_ingested": ingested.records,
                "journal_segments_removed": ingested.segments_removed,
                "scan": scanned,
            }
        )
    else:
        if scanned is not None:
            click.echo(
                f"scanned: {scanned['files']:,} block files, {scanned['temp_files']['files']:,} temp files"
            )
        _print_plan(plan, result)
    for name in plan.unknown_namespaces:
        click.echo(f"Warning: namespace {name!r} (retire/quota) is not in the catalog: skipped", err=True)
    if result.recheck_failures:
        click.echo(f"Error: {result.recheck_failures} delete batches kept: the catalog failed", err=True)
        sys.exit(1)
    if result.errors:
        # Deletions that failed (EACCES, EIO, ...): the pass did not do what was asked.  Refused paths
        # (symlinks, non-regular files) are counted but are the safety rules working, not a failure.
        click.echo(f"Error: {result.errors:,} deletions failed (rows kept; see the log)", err=True)
        sys.exit(1)


def _settings(state: KvfsContext, config: str | None) -> Any:
    """The evictor's settings, from the same sources it reads (config file < KVFS_* environment), for their
    quotas and retired namespaces."""
    from evictor.settings import SettingsError, load_settings

    flags: dict[str, Any] = {"root": str(state.root) if state.root else None}
    try:
        return load_settings(flags=flags, environ=os.environ, config=config)
    except SettingsError as exc:
        raise click.BadParameter(str(exc), param_hint="'--config'") from None
