"""`imagepipe`: upload a CSV, follow it, read its status, download its results; list, cancel and delete requests.

    imagepipe upload FILE --email ADDR [--webhook URL] [--wait] [--url BASE]
    imagepipe status ID [--wait] [--json] [--url BASE]
    imagepipe download ID -o DIR [--url BASE]
    imagepipe list [--limit N] [--cursor C] [--json] [--url BASE]
    imagepipe cancel ID [--no-wait] [--url BASE]
    imagepipe delete ID [--yes] [--url BASE]
    imagepipe parked list|show|replay|purge [ID] [--all] [--service S]   (through the broker: parked.py)

The API's address is --url, else IMAGEPIPE_URL, else the local API; the key, if the server wants one, is
IMAGEPIPE_API_KEY. Exit codes are in exit_codes.py (and `imagepipe --help`).
"""

from __future__ import annotations

import argparse
import os
import sys

from cli import commands, parked
from cli.api import Api, CliError, default_base_url
from cli.exit_codes import HELP, Exit

# Every subcommand, in the order `--help` lists them: add a new one here.
COMMANDS = (
    commands.add_upload,
    commands.add_status,
    commands.add_download,
    commands.add_list,
    commands.add_cancel,
    commands.add_delete,
    parked.add_parked,
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imagepipe",
        description="Compress product images: upload a CSV, follow its progress, download the results, "
        "delete them.",
        epilog=(
            "environment: IMAGEPIPE_URL (the API), IMAGEPIPE_API_KEY; `parked`: IMAGEPIPE_AMQP_URL, "
            f"IMAGEPIPE_BUS_PREFIX\n\nexit codes:\n{HELP}"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subcommands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(subcommands)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    api = Api(getattr(args, "url", default_base_url()), os.environ.get("IMAGEPIPE_API_KEY") or None)
    try:
        code = args.run(api, args)
    except CliError as exc:
        commands.err.print(f"[red]error:[/] {exc.message}")
        for p in exc.problems:
            where = ", ".join(
                x for x in (p.get("row") and f"row {p['row']}", p.get("column"), p.get("field")) if x
            )
            commands.err.print(f"  - {where + ': ' if where else ''}{p.get('reason', '')}")
        code = exc.code
    except KeyboardInterrupt:
        code = Exit.INTERRUPTED
    sys.exit(int(code))
