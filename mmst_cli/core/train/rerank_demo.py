"""train-rerank's offline defaults: with no ``--model``, a cross-encoder from the packaged
all-MiniLM-L6-v2; with no ``--data`` either, the demo's emoji-name pairs shipped with mmst.

The demo task: a query is an emoji's Unicode name with its words shuffled (``face smiling
slightly``); its candidates are the name itself (relevant) and the :data:`DEMO_NEGATIVES` other
names that share the most words with it (``slightly frowning face``, ``smiling face with
sunglasses``, ...: not relevant). Telling the name from its look-alikes needs query and candidate
read together, which a new classification head cannot do: it ranks them about at random before
training. The 256 training queries are names from the emoji train split and the 100 evaluation
queries names from the eval split (candidates from the same split), so evaluation asks for names
never seen in training. With the general defaults (bce, batch 16, lr 2e-5, one epoch: 80 steps)
NDCG@10 goes from 0.533 to 0.985 in about 30 s on 2 CPU cores (docs/train-rerank.md).

The shipped files (:data:`DEMO_TRAIN`, :data:`DEMO_EVAL`) are what :func:`demo_rows` makes of the
emoji captions; the test suite checks that they still are.
"""

from __future__ import annotations

import random

from mmst_cli.core.models.composition import EMOJI_DIR

DEMO_TRAIN = EMOJI_DIR / "rerank-train.jsonl"
DEMO_EVAL = EMOJI_DIR / "rerank-eval.jsonl"
#: Queries per demo file: the first names of the emoji train and eval splits.
DEMO_QUERIES = {"train": 256, "eval": 100}
DEMO_NEGATIVES = 4
DEMO_SEED = 42
#: What a run without --model says it starts from.
DEFAULT_MODEL_NOTE = "reranker: no --model, so a new one-label head on the packaged all-MiniLM-L6-v2"


def default_reranker_start() -> str:
    """The checkpoint a run without ``--model`` starts from: the packaged all-MiniLM-L6-v2."""
    from mmst_cli.core.models.locate import packaged_minilm_path

    return str(packaged_minilm_path())


def demo_rows(captions: list[str], queries: int, seed: int = DEMO_SEED, negatives: int = DEMO_NEGATIVES) -> list[dict[str, str]]:
    """(query, positive, negative_1..n) rows of the demo task (see the module docstring).

    Args:
        captions: Emoji names; the first ``queries`` become queries, all of them candidates.
        queries: How many rows to make.
        seed: Seeds the word shuffles and the order among equally close negatives.
        negatives: Look-alike names per row: those sharing the most words with the name.
    """
    shuffler = random.Random(seed)
    words = [set(caption.split()) for caption in captions]
    rows = []
    for index, caption in enumerate(captions[:queries]):
        query = caption.split()
        shuffler.shuffle(query)
        closest = sorted(
            (other for other in range(len(captions)) if captions[other] != caption),
            key=lambda other: (-len(words[index] & words[other]), shuffler.random()),
        )
        rows.append(
            {"query": " ".join(query), "positive": caption}
            | {f"negative_{rank + 1}": captions[other] for rank, other in enumerate(closest[:negatives])}
        )
    return rows
