"""How the CLI prints what went wrong: one line for humans, one JSON object under --json, exit 2."""

from __future__ import annotations

import json

import asyncpg
import pytest

from libs.errors import BrokerUnavailableError, DatabaseUnavailableError, InvalidEventError, NotMigratedError
from services.cli.runtime import EXIT_NOT_READY, error_line, error_object, run_async


def test_an_error_with_a_hint_ends_with_the_command_to_run() -> None:
    exc = NotMigratedError("the database is not migrated (6 migrations pending)")
    assert error_line(exc) == "the database is not migrated (6 migrations pending): run `settle migrate`"
    assert error_object(exc) == {
        "error": "the database is not migrated (6 migrations pending)",
        "hint": "settle migrate",
    }


def test_a_hint_can_be_given_per_error_and_newlines_are_folded() -> None:
    exc = BrokerUnavailableError("no broker\n  is running", hint="settle stack up")
    assert error_line(exc) == "no broker is running: run `settle stack up`"
    assert error_object(DatabaseUnavailableError("down")) == {"error": "down", "hint": None}
    assert error_line(InvalidEventError("line 3: not JSON")) == "InvalidEventError: line 3: not JSON"


@run_async
async def _fails(exc: BaseException, as_json: bool = False) -> None:
    raise exc


@pytest.mark.parametrize(
    "exc",
    [NotMigratedError("not migrated"), asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")],
)
def test_run_async_prints_one_line_and_exits_2(exc: BaseException, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as text_exit:
        _fails(exc)
    assert text_exit.value.code == EXIT_NOT_READY
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("settle: ")
    with pytest.raises(SystemExit) as json_exit:
        _fails(exc, as_json=True)
    assert json_exit.value.code == EXIT_NOT_READY
    out, err = capsys.readouterr()
    assert err == "" and set(json.loads(out)) == {"error", "hint"}


def test_run_async_lets_a_bug_through() -> None:
    with pytest.raises(asyncpg.exceptions.UndefinedTableError):
        _fails(asyncpg.exceptions.UndefinedTableError('relation "x" does not exist'))
