"""``--mini-batch-tokens``: GradCache mini batches packed by a token budget, in both training commands."""

from __future__ import annotations

import inspect
import json

import pytest

from mmst_cli.core.errors import MmstError
from mmst_cli.core.train.losses import LossOptions, gradcache_kwargs
from mmst_cli.core.train.embed import TrainEmbedOptions, train_embedding_model
from tests.data_factory import write_text_pairs
from tests.helpers import assert_one_line_error, run_mmst


def test_train_embed_packs_mini_batches_by_tokens(tiny_models, tmp_path, monkeypatch):
    """The budget reaches Sentence Transformers' GradCache, which then cuts mini batches by tokens."""
    from sentence_transformers.base.losses import gradcache

    if "mini_batch_num_tokens" not in inspect.signature(gradcache._minibatch_ranges).parameters:
        pytest.skip("the installed sentence-transformers has no GradCache token budget")
    seen = []
    original = gradcache._minibatch_ranges

    def recording_ranges(features, size, tokens):
        ranges = original(features, size, tokens)
        seen.append((tokens, ranges, features["attention_mask"].sum(dim=1).tolist()))
        return ranges

    monkeypatch.setattr(gradcache, "_minibatch_ranges", recording_ranges)
    data = write_text_pairs(tmp_path / "data", count=8)
    options = TrainEmbedOptions(
        model=str(tiny_models["bert"]), data=str(data), eval_data=str(data), max_steps=2, batch_size=8,
        loss=LossOptions(name="cached-mnrl", mini_batch_size=8, mini_batch_tokens=40), warmup=0.0,
        output_dir=str(tmp_path / "run"),
    )  # fmt: skip
    result = train_embedding_model(options, log=lambda line: None)
    assert result.summary["train"]["steps"] == 2
    assert seen and all(tokens == 40 for tokens, _, _ in seen)
    for _, ranges, lengths in seen:
        # Each mini batch stays within the budget (one over-long row may stand alone), so 8 rows of
        # ~13 tokens need several mini batches where --mini-batch-size 8 alone would take one.
        assert len(ranges) > 1
        for begin, end in ranges:
            assert sum(lengths[begin:end]) <= 40 or end - begin == 1


def test_a_loss_without_token_budget_is_refused_by_name():
    class LossWithoutBudget:
        def __init__(self, model, mini_batch_size: int = 32):
            pass

    assert gradcache_kwargs(LossWithoutBudget, 8, None) == {"mini_batch_size": 8}
    with pytest.raises(MmstError, match="LossWithoutBudget in the installed sentence-transformers .* use --mini-batch-size"):
        gradcache_kwargs(LossWithoutBudget, 8, 256)


def test_train_rerank_token_budget_trains_or_says_why(tiny_models, tmp_path):
    """Whether the CrossEncoder's cached loss takes a budget depends on the installed release: either
    it trains with it, or the run stops with one line and exit 2 before any training starts."""
    from sentence_transformers.cross_encoder.losses import CachedMultipleNegativesRankingLoss

    data = tmp_path / "pairs.jsonl"
    rows = [{"query": f"colour {i}?", "positive": f"answer {i}", "negative": f"answer {i + 1}"} for i in range(6)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf8")
    args = ("train-rerank", "--model", str(tiny_models["bert"]), "--data", str(data), "--loss", "cmnrl",
            "--mini-batch-tokens", "64", "--max-steps", "1", "--batch-size", "3", "--output-dir", str(tmp_path / "run"))  # fmt: skip
    result = run_mmst(*args)
    if "mini_batch_num_tokens" in inspect.signature(CachedMultipleNegativesRankingLoss.__init__).parameters:
        assert result.returncode == 0, result.stderr
    else:
        assert_one_line_error(result, 2, "--mini-batch-tokens", "CachedMultipleNegativesRankingLoss", "--mini-batch-size")
        assert not (tmp_path / "run" / "model").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("train-embed", "--loss", "mnrl", "--mini-batch-tokens", "128"), "--loss cached-mnrl"),
        (("train-embed", "--mini-batch-tokens", "0"), "positive number of tokens"),
        (("train-rerank", "--model", "m", "--data", "d", "--mini-batch-tokens", "64"), "--loss bce has none"),
    ],
)
def test_bad_token_budgets_are_one_line_errors(args, fragment):
    assert_one_line_error(run_mmst(*args), 2, fragment)
