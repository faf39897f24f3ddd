"""The `kvfs` admin CLI (console script `kvfs = kvfs.cli:main`).

Commands live one per module and are attached here.  Commands owned by other parts (`kvfs evictor ...`,
`kvfs replay ...`) are attached lazily through `kvfs.cli.app.OPTIONAL_COMMANDS`, or directly with
`main.add_command(...)` from code that imports this package.
"""

from kvfs.cli.app import OPTIONAL_COMMANDS, KvfsContext, main
from kvfs.cli.du import du
from kvfs.cli.gc import gc
from kvfs.cli.ls import ls
from kvfs.cli.scan import scan
from kvfs.cli.verify import verify

for _command in (scan, du, ls, gc, verify):
    main.add_command(_command)

__all__ = ["OPTIONAL_COMMANDS", "KvfsContext", "main"]
