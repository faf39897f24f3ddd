"""`kvfs evictor run|status` (and the `kvfs-evictor` console script, which is `run`).

Every setting of `evictor.settings.SETTINGS_SCHEMA` is a flag (`--max-bytes`, `--high-watermark`, ...);
flags win over `KVFS_*` environment variables, which win over the config file.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from typing import Any

import click
from click.core import ParameterSource

from evictor.logs import setup_logging
from evictor.settings import ENV_PREFIX, SETTINGS_SCHEMA, SettingsError, load_settings
from kvfs.cli.params import DURATION, PolicyOption

_CLICK_TYPES: dict[str, Any] = {"int": int}
# What a flag's value looks like in --help (the settings parse the text: `500GiB`, `10m`, `85`).
_METAVARS = {"size": "SIZE", "duration": "DURATION", "percent": "PERCENT", "path": "PATH", "int": "INTEGER"}
_NAMED_METAVARS = {"catalog": "URL", "metrics_host": "ADDRESS"}


def _setting_help(spec: Any) -> str:
    """The setting's help, its environment variable and its default, as click prints them for its own options
    (the variable is read by the settings loader, not by click: flags > environment > config file)."""
    extra = [f"env var: {ENV_PREFIX}{spec.name.upper()}"]
    if spec.default:
        extra.append(f"default: {spec.default}")
    return f"{spec.help}  [{'; '.join(extra)}]"


def _setting_options(func: Any) -> Any:
    """Attach one flag per setting; all default to None so unset flags do not override env/file."""
    for spec in reversed(list(SETTINGS_SCHEMA.values())):
        flag = "--" + spec.name.replace("_", "-")
        help_text = _setting_help(spec)
        if spec.kind == "bool":
            option = click.option(f"{flag}/--no-{flag[2:]}", spec.name, default=None, help=help_text)
        elif spec.kind == "quotas":
            option = click.option(
                "--quota", "quotas", multiple=True, metavar="NAMESPACE=SIZE", help=help_text
            )
        elif spec.kind == "list":
            option = click.option(flag, spec.name, multiple=True, metavar="NAMESPACE", help=help_text)
        elif spec.kind == "choice":
            option = click.option(
                flag, spec.name, type=click.Choice(spec.choices), default=None, help=help_text
            )
        elif spec.name == "policy":
            option = click.option(flag, spec.name, cls=PolicyOption, default=None, help=help_text)
        else:
            metavar = _NAMED_METAVARS.get(spec.name) or _METAVARS.get(spec.kind, "TEXT")
            option = click.option(
                flag,
                spec.name,
                type=_CLICK_TYPES.get(spec.kind, str),
                default=None,
                metavar=metavar,
                help=help_text,
            )
        func = option(func)
    return func


@click.command("run", context_settings={"help_option_names": ["-h", "--help"]})
@_setting_options
@click.version_option(package_name="kvfs")
def run_cmd(**flags: Any) -> None:
    """Run the evictor service until SIGTERM."""
    from evictor.service import run_service

    _inherit_kvfs_options(flags)
    try:
        settings = load_settings(flags)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    setup_logging(settings.log_format, settings.log_level)
    logging.getLogger("kvfs.evictor").debug("settings: %s", settings.to_json())
    code = run_service(settings)
    logging.shutdown()
    # Not sys.exit: a reconciliation scan still walking a huge tree must not hold the process past SIGTERM
    # (everything that needs closing was closed by run_service).
    os._exit(code)


def _inherit_kvfs_options(flags: dict[str, Any]) -> None:
    """`kvfs --root R --catalog C evictor run`: the group's options given on the command line count as this
    command's flags (their own flags win).  Environment values reach the settings directly."""
    ctx = click.get_current_context()
    top = ctx.find_root()
    if top is ctx:
        return  # the kvfs-evictor console script: no group above
    for group_param, setting in (("root", "root"), ("catalog_url", "catalog")):
        if (
            flags.get(setting) is None
            and top.get_parameter_source(group_param) is ParameterSource.COMMANDLINE
        ):
            flags[setting] = str(top.params[group_param])


def _group_catalog() -> str | None:
    """The catalog the `kvfs` group was given (`kvfs --catalog URL` or KVFS_CATALOG), not its default: the
    default catalog is a local file, and reading it would describe some other store than the evictor's."""
    top = click.get_current_context().find_root()
    if top.info_name is None or "catalog_url" not in top.params:
        return None
    if top.get_parameter_source("catalog_url") in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
        return str(top.params["catalog_url"])
    return None


def _fetch_status(url: str, timeout: float) -> dict[str, Any]:
    with urllib.request.urlopen(url.rstrip("/") + "/status", timeout=timeout) as resp:
        return json.load(resp)


def _catalog_status(catalog_url: str) -> dict[str, Any]:
    """What the catalog alone says when no service answers."""
    from kvfs.catalog import Catalog

    cat = Catalog.open(catalog_url, create=False)  # a read command: never creates a catalog
    try:
        usage = cat.usage()
        offsets = cat.journal_offsets()
        log_rows = cat.eviction_log(10)
        return {
            "service": None,
            "usage": {
                "catalog_files": usage.total_files,
                "catalog_bytes": usage.total_bytes,
                "namespaces": [
                    {"namespace": n.namespace, "files": n.files, "bytes": n.bytes} for n in usage.namespaces
                ],
            },
            "journal_segments_tracked": len(offsets),
            "recent_evictions": [
                {k: getattr(e, k) for k in ("time", "namespace", "reason", "files", "bytes")}
                for e in log_rows
            ],
        }
    finally:
        cat.close()


def _print_human(data: dict[str, Any]) -> None:
    from kvfs.units import format_duration, format_size

    svc = data.get("service", data)
    if data.get("service") is None and "pid" not in data:
        click.echo("service: not reachable (catalog view)")
    else:
        role = "leader" if svc.get("leader") else "follower"
        ready = "ready" if svc.get("ready") else f"NOT READY ({svc.get('ready_reason')})"
        click.echo(f"service: pid {svc.get('pid')}, {role}, {ready}, phase {svc.get('phase')}")
        marks = svc.get("watermarks", {})
        click.echo(
            f"watermarks: high {marks.get('high_pct')}%, low {marks.get('low_pct')}% of "
            + (format_size(marks["max_bytes"]) if marks.get("max_bytes") else "the filesystem (statvfs)")
        )
    usage = data.get("usage") or {}
    if usage.get("capacity_bytes"):
        click.echo(
            f"usage: {format_size(usage['used_bytes'])} of {format_size(usage['capacity_bytes'])} "
            f"({100 * usage['ratio']:.1f}%, {usage['source']})"
        )
    if usage:
        click.echo(
            f"catalog: {usage.get('catalog_files', 0)} files, {format_size(usage.get('catalog_bytes', 0))}"
        )
        for ns in usage.get("namespaces", []):
            click.echo(f"  {ns['namespace']:<60} {ns['files']:>10} files {format_size(ns['bytes']):>12}")
    scan = data.get("last_scan")
    if scan:
        ago = format_duration(time.time() - scan["started"])
        click.echo(f"last scan: {ago} ago, {scan['files']} files in {scan['duration_s']}s")
    elif "last_scan" in data:
        click.echo("last scan: none yet")
    journal = data.get("journal")
    if journal:
        click.echo(
            f"journal: backlog {format_size(journal['backlog_bytes'])}, "
            f"{journal['records_ingested']} records ingested since start"
        )
    last = data.get("last_pass")
    if last and last.get("result"):
        res = last["result"]
        click.echo(f"last eviction: {res['deleted_files']} files, {format_size(res['deleted_bytes'])}")
    for entry in data.get("recent_evictions", []):
        click.echo(
            f"  {time.strftime('%H:%M:%S', time.localtime(entry['time']))} {entry['namespace']} "
            f"{entry['reason']}: {entry['files']} files {format_size(entry['bytes'])}"
        )


@click.command("status")
@click.option(
    "--url", default="http://127.0.0.1:9400", show_default=True, help="The running evictor's HTTP address."
)
@click.option(
    "--catalog",
    "catalog_url",
    default=None,
    metavar="URL",
    help="Read the catalog when no service answers [default: `kvfs --catalog`, else KVFS_CATALOG].",
)
@click.option(
    "--timeout",
    type=DURATION,
    default="3s",
    show_default=True,
    help="How long to wait for the service (3s, 1m).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(url: str, catalog_url: str | None, timeout: float, as_json: bool) -> None:
    """Live state: usage, watermarks, leader, last scan, journal backlog."""
    catalog_url = catalog_url or _group_catalog()
    try:
        data = _fetch_status(url, timeout)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        if catalog_url is None:
            raise click.ClickException(
                f"no evictor answers at {url} ({exc}); pass --catalog (or set KVFS_CATALOG) to read the catalog"
            ) from None
        try:
            data = _catalog_status(catalog_url)
        except Exception as exc2:  # noqa: BLE001 - CatalogError or driver error: one line for people
            raise click.ClickException(f"no evictor at {url} and the catalog failed: {exc2}") from None
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        _print_human(data)


@click.group("evictor")
def evictor() -> None:
    """The kvfs-evictor service: keeps the store within capacity, TTL and quotas."""


evictor.add_command(run_cmd)
evictor.add_command(status_cmd)
