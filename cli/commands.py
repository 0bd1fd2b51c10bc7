"""The subcommands. Each is a `run(api, args) -> Exit` plus an `add_*` that declares its arguments; main.py
lists them in COMMANDS. Messages go to stderr; what a script captures (a request id, JSON) to stdout.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.prompt import Confirm
from rich.table import Table

from cli.api import Api, CliError, default_base_url
from cli.exit_codes import Exit, for_outcome

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

# Form fields of POST /upload sent from options of the same name (dashes for underscores) when given. The
# image options are checked by the server (one place): a bad value comes back as a problem naming it.
IMAGE_OPTIONS = ("max_width", "max_height", "format", "quality", "target")
UPLOAD_FIELDS = ("email", "webhook_url", *IMAGE_OPTIONS)
# Extensions of the output formats, whatever the system's MIME table knows (Python 3.11's lacks WebP).
EXTENSIONS = {"image/jpeg": ".jpg", "image/webp": ".webp", "image/avif": ".avif", "image/png": ".png"}
PAGE = 1000  # products per status page when listing every output
DOWNLOADERS = 4  # images fetched at once by `download`

Subcommands = argparse._SubParsersAction


def command(subcommands: Subcommands, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand with the options every one has (where the API is)."""
    p: argparse.ArgumentParser = subcommands.add_parser(name, help=help, description=help)
    p.add_argument("--url", default=default_base_url(), help="the API's base URL (default: %(default)s)")
    return p


# --- upload ---------------------------------------------------------------------------------------------
def add_upload(subcommands: Subcommands) -> None:
    p = command(subcommands, "upload", "upload a CSV of products and their image URLs")
    p.add_argument("file", help="the CSV: S. No., Product Name, Input Image Urls")
    p.add_argument("--email", required=True, help="who gets the completion email with the output CSV")
    p.add_argument("--webhook", dest="webhook_url", help="a URL called (signed) when the request completes")
    p.add_argument("--wait", action="store_true", help="follow the progress until the request is finished")
    options = p.add_argument_group("image options (for every image; see the README)")
    options.add_argument(
        "--max-width", metavar="N", help="fit inside N pixels wide, keeping the aspect ratio"
    )
    options.add_argument(
        "--max-height", metavar="N", help="fit inside N pixels high, keeping the aspect ratio"
    )
    options.add_argument(
        "--format", metavar="F", help="jpeg, webp or avif (default: JPEG, or WebP for transparent images)"
    )
    options.add_argument(
        "--quality", metavar="Q", help="1-95, or auto: per image, the lowest quality that scores --target"
    )
    options.add_argument("--target", metavar="T", help="with --quality auto: the SSIMULACRA2 score to meet")
    p.set_defaults(run=upload)


def upload(api: Api, args: argparse.Namespace) -> Exit:
    if not Path(args.file).is_file():
        raise CliError(Exit.USAGE, f"no such file: {args.file}")
    fields = {name: str(value) for name in UPLOAD_FIELDS if (value := getattr(args, name, None)) is not None}
    accepted = api.upload(args.file, fields)
    request_id = accepted["request_id"]
    err.print(
        f"[green]✓[/] accepted: {accepted['products']} products, {accepted['images']} images\n"
        f"  request  {request_id}\n  page     {api.page_url(request_id)}"
    )
    if accepted.get("options"):
        err.print(f"  options  {_options(accepted['options'])}")
    if secret := accepted.get("webhook_secret"):
        # Shown by the server in this answer only: the webhook's receiver needs it to verify deliveries.
        err.print(f"  webhook secret  {secret}  (shown once: keep it to verify the webhooks)")
    if not out.is_terminal:
        out.print(request_id)  # for scripts: ID=$(imagepipe upload ...)
    return wait(api, request_id) if args.wait else Exit.OK


# --- status ---------------------------------------------------------------------------------------------
def add_status(subcommands: Subcommands) -> None:
    p = command(subcommands, "status", "a request's progress; exits by its outcome")
    p.add_argument("request_id")
    p.add_argument("--wait", action="store_true", help="follow the progress until the request is finished")
    p.add_argument("--json", action="store_true", help="print the API's JSON (GET /status) to stdout")
    p.set_defaults(run=status)


def status(api: Api, args: argparse.Namespace) -> Exit:
    if args.wait:
        return wait(api, args.request_id)
    if args.json:
        body = api.get_json(f"/status/{args.request_id}")
        out.print_json(json.dumps(body))
        return for_outcome(body)
    body = api.get_json(f"/status/{args.request_id}", view="summary")
    show(api, body)
    return for_outcome(body)


def wait(api: Api, request_id: str) -> Exit:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("compressing", total=None, failed=0)

        def update(s: dict[str, Any]) -> None:
            done = s["no_img_compressed"] + s["no_img_failed"] + s.get("no_img_skipped", 0)
            progress.update(task, total=s["total_images"], completed=done, failed=s["no_img_failed"])

        try:
            final = api.follow(request_id, update)
        except KeyboardInterrupt:
            err.print(f"stopped waiting; the request goes on: imagepipe status {request_id} --wait")
            return Exit.INTERRUPTED
    show(api, final)
    return for_outcome(final)


COLOURS = {"COMPLETED": "green", "CANCELLED": "red", "CANCELLING": "magenta", "PENDING": "cyan"}


def show(api: Api, s: dict[str, Any]) -> None:
    colour = {**COLOURS, "COMPLETED": "green" if not s["no_img_failed"] else "yellow"}
    table = Table.grid(padding=(0, 2))
    table.add_row("request", s["request_id"])
    table.add_row("status", f"[bold {colour.get(s['status'], 'cyan')}]{s['status']}[/] ({s['progress']}%)")
    skipped = f" · [yellow]{s['no_img_skipped']} skipped[/]" if s.get("no_img_skipped") else ""
    table.add_row(
        "images",
        f"{s['total_images']} · [green]{s['no_img_compressed']} compressed[/] · [red]{s['no_img_failed']} failed[/]"
        + skipped,
    )
    if s["bytes_in"]:
        saved = round(100 * (s["bytes_in"] - s["bytes_out"]) / s["bytes_in"])
        table.add_row("size", f"{_size(s['bytes_in'])} → {_size(s['bytes_out'])} ({saved}% saved)")
    if any(value is not None for value in (s.get("options") or {}).values()):
        table.add_row("options", _options(s["options"]))
    table.add_row("page", api.page_url(s["request_id"]))
    if s.get("output_csv_url"):
        table.add_row("output", s["output_csv_url"])
    err.print(table)
    for failure in s["failures"][:10]:
        err.print(f"  [red]✗[/] {failure['url']}: {failure['reason']}")
    if s["no_img_failed"] > 10:
        err.print(f"  … and {s['no_img_failed'] - 10} more (the output CSV lists every one)")


def _options(options: dict[str, Any]) -> str:
    return " · ".join(
        f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
        for name, value in options.items()
        if value is not None
    )


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n / 1024:.1f} KB"


# --- list -----------------------------------------------------------------------------------------------
def add_list(subcommands: Subcommands) -> None:
    p = command(subcommands, "list", "your requests, newest first (with an API key: only that key's)")
    p.add_argument("--limit", type=int, default=20, help="requests per page (1-100; default: %(default)s)")
    p.add_argument("--cursor", help="where the page starts: the `next` a previous page printed")
    p.add_argument("--json", action="store_true", help="print the API's JSON (GET /requests) to stdout")
    p.set_defaults(run=list_requests)


def list_requests(api: Api, args: argparse.Namespace) -> Exit:
    params = {"limit": args.limit} | ({"cursor": args.cursor} if args.cursor else {})
    page = api.get_json("/requests", **params)
    if args.json:
        out.print_json(json.dumps(page))
        return Exit.OK
    table = Table("status", "progress", "images")
    table.add_column("created (UTC)", no_wrap=True)
    table.add_column("request", no_wrap=True)  # whole, even in a narrow terminal: it is what you copy
    for r in page["requests"]:
        skipped = f" · {r['no_img_skipped']} skipped" if r["no_img_skipped"] else ""
        table.add_row(
            f"[{COLOURS.get(r['status'], 'cyan')}]{r['status']}[/]",
            f"{r['progress']}%",
            f"{r['no_img_compressed']}/{r['total_images']} · {r['no_img_failed']} failed{skipped}",
            r["created_at"][:16].replace("T", " "),
            r["request_id"],
        )
    out.print(table if page["requests"] else "no requests yet")
    if page["next_cursor"]:
        err.print(f"more: imagepipe list --cursor {page['next_cursor']}", soft_wrap=True)  # one line to copy
    return Exit.OK


# --- cancel ---------------------------------------------------------------------------------------------
def add_cancel(subcommands: Subcommands) -> None:
    p = command(subcommands, "cancel", "cancel a request: images not started are skipped, never fetched")
    p.add_argument("request_id")
    p.add_argument("--no-wait", dest="wait", action="store_false", help="return once the cancel is accepted")
    p.set_defaults(run=cancel)


def cancel(api: Api, args: argparse.Namespace) -> Exit:
    """Waits (unless --no-wait) for the images in flight to finish: exits 4 (cancelled) once it has."""
    s = api.post_json(f"/requests/{args.request_id}/cancel")
    if s["status"] == "CANCELLING":
        err.print(f"[magenta]cancelling[/] {args.request_id}: images not started are skipped")
    if not args.wait:
        return Exit.OK
    if s["status"] != "CANCELLED":
        return wait(api, args.request_id)
    show(api, s)
    return for_outcome(s)


# --- download -------------------------------------------------------------------------------------------
def add_download(subcommands: Subcommands) -> None:
    p = command(subcommands, "download", "the output CSV and every compressed image, into a folder")
    p.add_argument("request_id")
    p.add_argument("-o", "--output", default=".", help="the folder (created if needed; default: here)")
    p.set_defaults(run=download)


def download(api: Api, args: argparse.Namespace) -> Exit:
    s = api.get_json(f"/status/{args.request_id}", view="summary")
    if for_outcome(s) == Exit.PENDING:
        err.print(f"not finished yet ({s['progress']}%): imagepipe status {args.request_id} --wait")
        return Exit.PENDING
    folder = Path(args.output)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    csv_path = folder / f"imagepipe-{args.request_id}.csv"
    api.download(f"/output/{args.request_id}", lambda r: _save(r, csv_path))
    jobs = list(_outputs(api, args.request_id, s["total_products"]))
    with Progress(
        *Progress.get_default_columns(), MofNCompleteColumn(), console=err, transient=True
    ) as progress:
        task = progress.add_task("downloading", total=len(jobs))

        def fetch(job: tuple[str, str]) -> None:
            url, stem = job
            api.download(url, lambda r: _save(r, folder / "images" / (stem + _extension(r))))
            progress.advance(task)

        with ThreadPoolExecutor(DOWNLOADERS) as pool:
            list(pool.map(fetch, jobs))
    err.print(f"[green]✓[/] {csv_path} and {len(jobs)} images in {folder / 'images'}")
    return for_outcome(s)


def _outputs(api: Api, request_id: str, products: int) -> Any:
    """(image URL, file stem) of every compressed image: `<S. No.>-<position in the row>`."""
    for offset in range(0, products, PAGE):
        page = api.get_json(f"/status/{request_id}", offset=offset, limit=PAGE)
        for product in page["product_details"]:
            serial = re.sub(r"[^A-Za-z0-9._-]+", "_", product["serial_number"])[:80]
            for n, url in enumerate(product["output_urls"], start=1):
                if url:
                    yield url, f"{serial}-{n}"


def _extension(response: httpx.Response) -> str:
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    return EXTENSIONS.get(media_type) or mimetypes.guess_extension(media_type) or ".bin"


def _save(response: httpx.Response, path: Path) -> None:
    partial = path.with_name(path.name + ".part")  # never leave a truncated file under the real name
    with partial.open("wb") as f:
        for chunk in response.iter_bytes():
            f.write(chunk)
    partial.replace(path)


# --- delete ---------------------------------------------------------------------------------------------
def add_delete(subcommands: Subcommands) -> None:
    p = command(subcommands, "delete", "delete a request, its output and its images (a running one stops)")
    p.add_argument("request_id")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(run=delete)


def confirmed(question: str, *, yes: bool, otherwise: str) -> bool:
    """--yes, or a yes at the terminal; without a terminal only --yes confirms. `otherwise` is said if not."""
    if yes:
        return True
    if not sys.stdin.isatty():
        err.print(f"{otherwise}: confirm with --yes (there is no terminal to ask on)")
        return False
    if Confirm.ask(question, console=err, default=False):
        return True
    err.print(otherwise)
    return False


def delete(api: Api, args: argparse.Namespace) -> Exit:
    question = f"Delete request {args.request_id}, its output CSV and all its images? This cannot be undone"
    if not confirmed(question, yes=args.yes, otherwise="not deleted"):
        return Exit.DECLINED
    api.delete_json(f"/requests/{args.request_id}")
    err.print(f"[green]✓[/] deleted {args.request_id} (its images are being removed)")
    return Exit.OK
