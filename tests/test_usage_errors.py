"""Usage errors, Click's and mmst's own cheap checks: one ``Error:`` line, exit 2, before any model loads."""

from __future__ import annotations

import pytest

from tests.helpers import assert_one_line_error, run_mmst


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("train-embed", "--bogus"), ("No such option: --bogus", "see 'mmst train-embed --help'")),
        (("encode", "-o", "x.npy"), ("Missing argument 'INPUTS'", "see 'mmst encode --help'")),
        (("train-rerank", "--epochs", "abc"), ("'--epochs'", "see 'mmst train-rerank --help'")),
        (("no-such-command",), ("No such command", "--help")),
        (("evaluate", "--fail-under"), ("requires an argument", "--help")),
    ],
)
def test_click_usage_errors_are_one_line(args, fragments):
    assert_one_line_error(run_mmst(*args), 2, *fragments)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("train-embed", "--max-steps", "0"), ("--max-steps must be a positive number of steps, got 0",)),
        (("train-rerank", "--model", "m", "--data", "d", "--max-steps", "-3"), ("--max-steps", "got -3")),
        (("evaluate", "--data", "d", "--fail-under", "ndcg@10=nan"), ("ndcg@10=nan", "from 0 to 1")),
        (("evaluate", "--data", "d", "--fail-under", "ndcg@10=1.5"), ("from 0 to 1",)),
    ],
)
def test_cheap_checks_refuse_what_would_mislead(args, fragments):
    """--max-steps 0 used to train one step; a nan threshold could never fail."""
    assert_one_line_error(run_mmst(*args), 2, *fragments)


def test_bare_mmst_still_shows_the_help():
    result = run_mmst()
    assert "Usage: mmst" in result.stdout and "train-embed" in result.stdout
    assert "Error" not in result.stderr
