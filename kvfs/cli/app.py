"""The `kvfs` command group: global options, the shared context, and one-line error handling.

Extra command groups that live in other packages are attached lazily by name (see `OPTIONAL_COMMANDS`), so
`kvfs --help` works without them installed and importing the CLI never imports the evictor or vLLM.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from kvfs.catalog import Catalog

DEFAULT_ROOT = "/mnt/files-storage"
DEFAULT_CATALOG_HELP = "sqlite:///$XDG_STATE_HOME/kvfs/catalog.db, i.e. ~/.local/state/kvfs/catalog.db"

# Commands provided by other parts of kvfs: name → "module:attribute".  Listed only when the module exists;
# imported only when the command is used.  To add one, append here (the hook agreed with the evictor and
# replay owners).
OPTIONAL_COMMANDS: dict[str, str] = {
    "evictor": "evictor.cli:evictor",
    "replay": "kvfs.cli.replay:replay",
}


def one_line(message: str) -> str:
    return " ".join(message.split())


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@dataclass
class KvfsContext:
    """What every command shares: the root and the catalog URL; the catalog opens on first use."""

    root: Path
    catalog_url: str
    _catalog: Catalog | None = field(default=None, repr=False)

    def require_root(self) -> Path:
        """The root, or a one-line error when it is not an existing directory."""
        if not self.root.exists():
            raise click.ClickException(f"root {self.root} does not exist (set --root or KVFS_ROOT)")
        if not self.root.is_dir():
            raise click.ClickException(f"root {self.root} is not a directory")
        return self.root

    def catalog(self, *, create: bool = True) -> Catalog:
        """The catalog; `create=False` for commands that only read (they never create a catalog or tables)."""
        if self._catalog is None:
            from kvfs.catalog import Catalog

            # Catalog.open refuses an SQLite file inside the root or on a network filesystem.
            self._catalog = Catalog.open(self.catalog_url, root=self.root, create=create)
        return self._catalog

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None


def _user_error_types() -> tuple[type[BaseException], ...]:
    from kvfs.catalog.errors import CatalogError  # CatalogUnavailable: a failed statement, as one line

    return (CatalogError, OSError, ValueError)


class KvfsGroup(click.Group):
    """Turns user errors into one line on stderr and a non-zero exit; never a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        names.update(n for n, target in OPTIONAL_COMMANDS.items() if _module_exists(target.split(":")[0]))
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None or cmd_name not in OPTIONAL_COMMANDS:
            return cmd
        module_name, _, attr = OPTIONAL_COMMANDS[cmd_name].partition(":")
        if not _module_exists(module_name):
            return None
        loaded = getattr(importlib.import_module(module_name), attr)
        return loaded if isinstance(loaded, click.Command) else None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # `kvfs ls ... | head`: the reader left.  Handled here, not by click's main, which exits 1 for it.
            _quiet_exit()
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except _user_error_types() as exc:
            from kvfs.catalog.engine import redact_url

            raise click.ClickException(one_line(redact_url(str(exc))) or type(exc).__name__) from exc

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            # Bare `kvfs` (or a bare group): the help as click formats it, not squashed into one line.
            click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            # click would print usage lines too; users get one line (`--help` has the rest).
            click.echo(f"Error: {one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except (click.Abort, KeyboardInterrupt):
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except BrokenPipeError:
            _quiet_exit()
        sys.exit(rv if isinstance(rv, int) else 0)


def _quiet_exit() -> None:
    """The reader of stdout left (`| head`): exit 0 and say nothing more.  stdout's descriptor is pointed at
    /dev/null so the interpreter's final flush of what is still buffered cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.exit(0)


def _default_catalog() -> str:
    from kvfs.catalog import default_catalog_url

    return default_catalog_url()


@click.group(cls=KvfsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root",
    envvar="KVFS_ROOT",
    default=DEFAULT_ROOT,
    show_default=True,
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The shared KV-cache directory (the vLLM offload root).",
)
@click.option(
    "--catalog",
    "catalog_url",
    envvar="KVFS_CATALOG",
    default=None,
    show_envvar=True,
    metavar="URL",
    help=f"Catalog: sqlite:///PATH, a bare PATH, or postgresql+psycopg://USER@HOST/DB. "
    f"[default: {DEFAULT_CATALOG_HELP}]",
)
@click.version_option(package_name="kvfs")
@click.pass_context
def main(ctx: click.Context, root: Path, catalog_url: str | None) -> None:
    """Manage the shared-storage KV-cache tier of vLLM: usage, eviction, verification.

    Every command prints a table for people; add --json for machines.
    """
    state = KvfsContext(root=root, catalog_url=catalog_url or _default_catalog())
    ctx.obj = state
    ctx.call_on_close(state.close)


pass_state = click.make_pass_decorator(KvfsContext)
