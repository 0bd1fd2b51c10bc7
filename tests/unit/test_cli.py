"""The CLI's logic: exit codes by outcome, where it finds the API, its command line."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from cli.api import default_base_url
from cli.exit_codes import Exit, for_outcome
from cli.main import parser


@pytest.mark.parametrize(
    ("snapshot", "code"),
    [
        ({"status": "COMPLETED", "no_img_failed": 0}, Exit.OK),
        ({"status": "COMPLETED", "no_img_failed": 2}, Exit.SOME_FAILED),
        ({"status": "CANCELLED", "no_img_failed": 0}, Exit.CANCELLED),
        ({"status": "PENDING", "no_img_failed": 1}, Exit.PENDING),
    ],
)
def test_the_exit_code_says_how_the_request_ended(snapshot: dict[str, object], code: Exit) -> None:
    assert for_outcome(snapshot) == code


def test_exit_codes_are_distinct_and_stable() -> None:
    codes = {e.name: e.value for e in Exit}
    assert len(set(codes.values())) == len(codes)
    assert codes == {
        "OK": 0, "ERROR": 1, "USAGE": 2, "SOME_FAILED": 3, "CANCELLED": 4, "REFUSED": 5, "UNAVAILABLE": 6,
        "PENDING": 7, "DECLINED": 8, "INTERRUPTED": 130,
    }  # fmt: skip


def test_the_api_is_the_url_option_else_imagepipe_url_else_the_local_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("IMAGEPIPE_URL", raising=False)
    monkeypatch.delenv("IMAGEPIPE_PORT", raising=False)
    assert default_base_url() == "http://127.0.0.1:8000"
    monkeypatch.setenv("IMAGEPIPE_PORT", "18123")
    assert default_base_url() == "http://127.0.0.1:18123"
    monkeypatch.setenv("IMAGEPIPE_URL", "https://imagepipe.example.com")
    assert parser().parse_args(["status", "x"]).url == "https://imagepipe.example.com"
    assert parser().parse_args(["status", "x", "--url", "http://h:1"]).url == "http://h:1"


def test_upload_takes_file_email_webhook_wait_and_url() -> None:
    args = parser().parse_args(
        [
            "upload",
            "p.csv",
            "--email",
            "a@example.com",
            "--webhook",
            "https://h/x",
            "--wait",
            "--url",
            "http://h:1",
        ]
    )
    assert (args.file, args.email, args.webhook_url, args.wait, args.url) == (
        "p.csv", "a@example.com", "https://h/x", True, "http://h:1",
    )  # fmt: skip
    with pytest.raises(SystemExit) as missing_email:
        parser().parse_args(["upload", "p.csv"])
    assert missing_email.value.code == Exit.USAGE


def test_upload_sends_the_image_options_given_as_form_fields(tmp_path: Path) -> None:
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("S. No.,Product Name,Input Image Urls\n")
    argv = ["upload", str(csv_path), "--email", "a@example.com", "--max-width", "800", "--format", "webp"]
    args = parser().parse_args([*argv, "--quality", "auto", "--target", "70"])
    sent: list[dict[str, str]] = []

    class RecordingApi:
        def upload(self, path: str, fields: dict[str, str]) -> dict[str, Any]:
            sent.append(fields)
            return {"request_id": "r1", "products": 0, "images": 0, "options": {"max_width": 800}}

        def page_url(self, request_id: str) -> str:
            return f"http://h/r/{request_id}"

    assert args.run(RecordingApi(), args) == Exit.OK
    assert sent == [
        {"email": "a@example.com", "max_width": "800", "format": "webp", "quality": "auto", "target": "70"}
    ]  # as typed: the server checks them, and names a bad one
    args = parser().parse_args(argv[:4])
    args.run(RecordingApi(), args)
    assert sent[-1] == {"email": "a@example.com"}  # none given: none sent, the defaults apply


def test_upload_shows_the_webhook_secret_it_is_given_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("S. No.,Product Name,Input Image Urls\n")
    args = parser().parse_args(
        ["upload", str(csv_path), "--email", "a@example.com", "--webhook", "https://h/x"]
    )

    class AcceptingApi:
        def upload(self, path: str, fields: dict[str, str]) -> dict[str, Any]:
            return {"request_id": "r1", "products": 0, "images": 0, "webhook_secret": "whsec_c2VjcmV0"}

        def page_url(self, request_id: str) -> str:
            return f"http://h/r/{request_id}"

    assert args.run(AcceptingApi(), args) == Exit.OK
    assert "whsec_c2VjcmV0" in capsys.readouterr().err


class DeletingApi:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    def delete_json(self, path: str) -> dict[str, Any]:
        self.deleted.append(path)
        return {"request_id": path.rsplit("/", 1)[-1], "deleted": True}


@pytest.mark.parametrize(
    ("tty", "answer", "code", "deleted"),
    [
        (True, "y\n", Exit.OK, ["/requests/r1"]),
        (True, "n\n", Exit.DECLINED, []),
        (False, "", Exit.DECLINED, []),
    ],
    ids=["confirmed", "declined", "no-terminal-no-yes"],
)
def test_delete_asks_first_and_deletes_only_when_confirmed(
    monkeypatch: pytest.MonkeyPatch, tty: bool, answer: str, code: Exit, deleted: list[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(answer))
    monkeypatch.setattr("sys.stdin.isatty", lambda: tty)
    api = DeletingApi()
    args = parser().parse_args(["delete", "r1"])
    assert args.run(api, args) == code
    assert api.deleted == deleted


def test_delete_with_yes_does_not_ask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # asking would find nothing to read
    api = DeletingApi()
    args = parser().parse_args(["delete", "r1", "--yes"])
    assert args.run(api, args) == Exit.OK
    assert api.deleted == ["/requests/r1"]


def _api_answering(answers: dict[tuple[str, str], tuple[int, dict[str, Any]]]) -> Any:
    """The real CLI client, over a transport answering `answers[(method, path)]`; records the calls."""
    import httpx

    from cli.api import Api

    calls: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        status, body = answers[(request.method, request.url.path)]
        return httpx.Response(status, json=body)

    api = Api("http://h")
    api.http = httpx.Client(base_url="http://h", transport=httpx.MockTransport(answer))
    return api, calls


SUMMARY = {
    "request_id": "r1" + "x" * 20, "status": "CANCELLED", "progress": 100.0, "total_images": 9, "no_img_compressed": 2,
    "no_img_failed": 0, "no_img_skipped": 7, "created_at": "2026-12-01T10:00:00.123Z", "completed_at": None,
    "bytes_in": 0, "bytes_out": 0, "failures": [], "options": {}, "output_csv_url": "http://h/output/r1",
}  # fmt: skip


def test_list_prints_a_table_and_where_the_next_page_starts(capsys: pytest.CaptureFixture[str]) -> None:
    page = {"requests": [SUMMARY], "next_cursor": "abc"}
    api, calls = _api_answering({("GET", "/requests"): (200, page)})
    args = parser().parse_args(["list", "--limit", "5"])
    assert args.run(api, args) == Exit.OK
    captured = capsys.readouterr()
    assert SUMMARY["request_id"] in captured.out and "CANCELLED" in captured.out
    assert "2026-12-01 10:00" in captured.out
    assert "7 skipped" in captured.out
    assert "imagepipe list --cursor abc" in captured.err
    assert calls[0].url.params["limit"] == "5"

    args = parser().parse_args(["list", "--json", "--cursor", "abc"])
    assert args.run(api, args) == Exit.OK
    assert '"next_cursor": "abc"' in capsys.readouterr().out and calls[1].url.params["cursor"] == "abc"


def test_cancel_posts_and_exits_cancelled_once_it_is() -> None:
    api, calls = _api_answering({("POST", "/requests/r1/cancel"): (200, SUMMARY)})
    args = parser().parse_args(["cancel", "r1"])
    assert args.run(api, args) == Exit.CANCELLED
    assert [(c.method, c.url.path) for c in calls] == [("POST", "/requests/r1/cancel")]
    args = parser().parse_args(["cancel", "r1", "--no-wait"])
    assert args.run(api, args) == Exit.OK


def test_cancelling_a_finished_request_is_refused() -> None:
    from cli.api import CliError

    refusal = {"error": "the request is already complete; there is nothing left to cancel", "problems": []}
    api, _ = _api_answering({("POST", "/requests/r1/cancel"): (409, refusal)})
    args = parser().parse_args(["cancel", "r1"])
    with pytest.raises(CliError) as refused:
        args.run(api, args)
    assert refused.value.code == Exit.REFUSED and "already complete" in refused.value.message
