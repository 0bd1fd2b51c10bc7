"""What `imagepipe` exit codes mean. Scripts rely on these numbers: never renumber one, only add."""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0  # done: the request completed with no failed image (or the command did what it was asked)
    ERROR = 1  # an unexpected error in the CLI itself
    USAGE = 2  # a bad command line
    SOME_FAILED = 3  # the request completed, but some images failed (each is listed, with its reason)
    CANCELLED = 4  # the request was cancelled
    REFUSED = 5  # the API refused the call (4xx): an invalid CSV or field, an unknown id, a missing API key
    UNAVAILABLE = 6  # the API could not be reached, timed out, or answered 5xx: try again later
    PENDING = 7  # the request is not finished yet (`status`; `download` before it completes)
    DECLINED = 8  # a confirmation was declined (or could not be asked: no terminal, no --yes): nothing done
    INTERRUPTED = (
        130  # Ctrl-C while waiting: the request goes on; follow it with `imagepipe status ID --wait`
    )


def for_outcome(snapshot: dict[str, object]) -> Exit:
    """The exit code that says how a request ended (or that it has not)."""
    status = snapshot.get("status")
    if status == "COMPLETED":
        return Exit.SOME_FAILED if snapshot.get("no_img_failed") else Exit.OK
    if status == "CANCELLED":
        return Exit.CANCELLED
    return Exit.PENDING


HELP = "\n".join(
    f"  {code.value:>3}  {text}"
    for code, text in [
        (Exit.OK, "completed, no image failed (or the command succeeded)"),
        (Exit.SOME_FAILED, "completed, some images failed"),
        (Exit.CANCELLED, "the request was cancelled"),
        (Exit.REFUSED, "refused by the API (4xx): bad CSV or field, unknown id, API key"),
        (Exit.UNAVAILABLE, "the API is unreachable or failing (connection, timeout, 5xx)"),
        (Exit.PENDING, "not finished yet"),
        (Exit.DECLINED, "not confirmed: nothing was done (answer y, or pass --yes)"),
        (Exit.USAGE, "bad command line"),
        (Exit.INTERRUPTED, "interrupted while waiting (the request goes on)"),
    ]
)
