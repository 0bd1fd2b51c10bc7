"""`imagepipe parked list|show|replay|purge`: what the services gave up on, why, and sending it back.

These talk to the broker, not to the API (shared/parking.py): IMAGEPIPE_AMQP_URL and IMAGEPIPE_BUS_PREFIX,
as the services have them. A message is named by its id (the event's; a unique prefix will do) or, with
--service, by its position in `list`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from cli.api import Api, CliError
from cli.commands import Subcommands, confirmed, err, out
from cli.exit_codes import Exit
from shared.errors import Unavailable
from shared.parking import CONSUMERS, Action, Decide, ParkedMessage, ParkingLots
from shared.settings import Settings

T = TypeVar("T")


def add_parked(subcommands: Subcommands) -> None:
    p = subcommands.add_parser(
        "parked",
        help="messages the services gave up on: list, show, replay, purge",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_text, run in (
        ("list", "every parked message, with why it was parked", list_parked),
        ("show", "one parked message: its reason, headers and event", show_parked),
        ("replay", "send parked messages back to their service's queue, attempts reset", replay_parked),
        ("purge", "drop parked messages for good", purge_parked),
    ):
        a = actions.add_parser(name, help=help_text, description=help_text)
        a.add_argument("--service", choices=CONSUMERS, help="only this service's (default: every one)")
        if name in ("show", "replay", "purge"):
            a.add_argument(
                "message", nargs="?", help="its id (or a unique prefix), or its position with --service"
            )
        if name in ("replay", "purge"):
            a.add_argument("--all", action="store_true", help="every parked message (of --service, if given)")
        if name == "purge":
            a.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        if name == "list":
            a.add_argument("--json", action="store_true", help="print them as JSON to stdout")
        a.set_defaults(run=run)


def list_parked(_: Api, args: argparse.Namespace) -> Exit:
    seen = _messages(args)
    if args.json:
        out.print_json(json.dumps([_as_json(m) for m in seen]))
        return Exit.OK
    if not seen:
        err.print("nothing is parked")
        return Exit.OK
    for m in seen:  # a block each: the reason is long, and a table squeezed into 80 columns is unreadable
        out.print(
            f"[bold]{m.service} #{m.position}[/]  {m.message_id}  {m.event_type} ({m.routing_key})"
            f"  request {m.request_id or '-'}",
            soft_wrap=True,
        )
        out.print(f"  parked {m.parked_at[:19] or '?'}: {m.kind}, {m.attempts} attempt(s)", soft_wrap=True)
        out.print(f"  why    {m.reason}", soft_wrap=True, markup=False)
    err.print(f"{len(seen)} parked; `imagepipe parked show ID` for one, `replay ID` to send it back")
    return Exit.OK


def show_parked(_: Api, args: argparse.Namespace) -> Exit:
    select = _selector(args)
    (found,) = _matching(_messages(args), select, args)
    out.print_json(json.dumps(_as_json(found) | {"headers": _plain(found.headers), "event": found.payload()}))
    return Exit.OK


def replay_parked(_: Api, args: argparse.Namespace) -> Exit:
    select = _selector(args)
    if not args.all:  # a name that matches nothing, or several messages, replays nothing
        _matching(_messages(args), select, args)
    walked = _walk(args, lambda m: Action.REPLAY if select(m) else Action.KEEP)
    done = [m for m, action in walked if action is Action.REPLAY]
    for m in done:
        err.print(f"[green]✓[/] replayed {m.message_id} ({m.event_type}) to {m.service}")
    err.print(f"{len(done)} replayed")
    return Exit.OK


def purge_parked(_: Api, args: argparse.Namespace) -> Exit:
    select = _selector(args)
    chosen = _matching(_messages(args), select, args)
    if not chosen:
        err.print("nothing is parked")
        return Exit.OK
    if not confirmed(
        f"Drop {len(chosen)} parked message(s) for good?", yes=args.yes, otherwise="nothing dropped"
    ):
        return Exit.DECLINED
    ids = {(m.service, m.message_id, m.position) for m in chosen}
    walked = _walk(
        args, lambda m: Action.DROP if (m.service, m.message_id, m.position) in ids else Action.KEEP
    )
    err.print(f"{sum(action is Action.DROP for _, action in walked)} dropped")
    return Exit.OK


# --- helpers ----------------------------------------------------------------------------------------------
def _services(args: argparse.Namespace) -> tuple[str, ...]:
    return (args.service,) if args.service else CONSUMERS


def _messages(args: argparse.Namespace) -> list[ParkedMessage]:
    """Every parked message of the services asked about, each left where it is."""
    return [m for m, _ in _walk(args, lambda m: Action.KEEP)]


def _walk(args: argparse.Namespace, decide: Decide) -> list[tuple[ParkedMessage, Action]]:
    async def walk(lots: ParkingLots) -> list[tuple[ParkedMessage, Action]]:
        return [done for service in _services(args) for done in await lots.walk(service, decide)]

    return _broker(walk)


def _broker(work: Callable[[ParkingLots], Awaitable[T]]) -> T:
    settings = Settings()

    async def run() -> T:
        async with ParkingLots(settings) as lots:
            return await work(lots)

    try:
        return asyncio.run(run())
    except Unavailable as exc:
        raise CliError(Exit.UNAVAILABLE, f"the broker at {_safe(settings.amqp_url)}: {exc}") from None


def _selector(args: argparse.Namespace) -> Callable[[ParkedMessage], bool]:
    """Which messages the command is about: --all, an id prefix, or a position (with --service)."""
    if getattr(args, "all", False):
        return lambda m: True
    name = args.message
    if not name:
        raise CliError(Exit.USAGE, "name a message (its id, or its position with --service), or give --all")
    if name.isdigit() and len(name) < 6:
        if not args.service:
            raise CliError(Exit.USAGE, f"position {name}: of which service's list? give --service")
        return lambda m: m.position == int(name)
    return lambda m: m.message_id.startswith(name)


def _matching(
    seen: list[ParkedMessage], select: Callable[[ParkedMessage], bool], args: argparse.Namespace
) -> list[ParkedMessage]:
    found = [m for m in seen if select(m)]
    if getattr(args, "all", False):
        return found
    if not found:
        raise CliError(Exit.REFUSED, f"no parked message {args.message} (see `imagepipe parked list`)")
    if len(found) > 1:
        raise CliError(Exit.REFUSED, f"{args.message} names {len(found)} messages: give more of the id")
    return found


def _as_json(m: ParkedMessage) -> dict[str, Any]:
    keys = ("service", "position", "message_id", "event_type", "routing_key", "request_id", "kind")
    rest = ("reason", "attempts", "last_error", "parked_at", "replays")
    return {k: getattr(m, k) for k in (*keys, *rest)}


def _plain(headers: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(headers, default=str))


def _safe(url: str) -> str:
    """The URL without its password."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"
