"""Retrieval scoring at scale: mmst evaluate's search + metrics against Sentence Transformers'
``InformationRetrievalEvaluator``, and mmst's metrics against pytrec_eval (trec_eval's C code).

Data: precomputed random embeddings, no model: ``--docs`` corpus vectors and ``--queries`` query
vectors of ``--dim`` float32 dimensions (default 10,000 x 100,000 x 384), seeded. Each query has
1 to 3 relevant documents (binary qrels) and is the mean of their vectors plus Gaussian noise, so
the metrics are neither 0 nor 1.

Comparison 1, search + metrics (time and peak memory), each side in a fresh process:

* mmst: ``mmst_cli.core.retrieval.evaluation.retrieve`` (exact blocked top-100 search, cosine, the depth
  ``mmst evaluate`` keeps) and ``score_run`` -> ``mmst_cli.core.retrieval.metrics.compute_metrics`` with
  ``ks = 1, 3, 5, 10, 100``, a superset of the evaluator's defaults;
* Sentence Transformers: ``InformationRetrievalEvaluator`` with its default cut-offs (accuracy /
  precision / recall @ 1, 3, 5, 10, MRR@10, NDCG@10, MAP@100: top-100 search), fed the same
  embeddings through ``compute_all_metrics(model, corpus_embeddings=...)`` (its documented
  argument for precomputed corpus vectors) and a stub model whose ``encode_query`` returns the
  precomputed query vectors; ``score_functions={"cosine": cos_sim}``.

Time is the wall time of that computation (embedding generation and imports excluded). Memory is
the process' peak RSS during the computation: the peak is reset (``/proc/self/clear_refs``) once
the embeddings are in memory, and the table shows the peak above the RSS at that point (what the
computation itself needs); the absolute peaks are in the JSON. NDCG@10 must agree (checked).
The sides alternate (A B, B A, ...) over ``--repeats`` runs; the table shows medians.
Target: mmst / Sentence Transformers <= 1 for both (the issue states no number; mmst's evaluate
docs promise a bounded block of scores, so it should not need more than the evaluator).

Comparison 2, metrics only (time), in one process: ``compute_metrics(run, qrels, ks=(10,))``
against pytrec_eval with the same six measures at 10 (``ndcg_cut.10``, ``recip_rank``,
``recall.10``, ``P.10``, ``map_cut.10``, ``success.10``; evaluator construction included, as
``compute_metrics`` parses its qrels too) on the top-100 run from mmst's search. Information only:
pytrec_eval is the C reference mmst's tests compare against.

If the full size is too slow on a small machine, ``--scale 0.5`` shrinks queries and documents
equally (both sides always run the same size).

    .venv/bin/python bench/evaluate_scale.py [--scale 1.0] [--repeats 3]
"""

from __future__ import annotations

import json
import sys

from _common import (
    HIDDEN,
    Row,
    Table,
    common_arguments,
    interleaved,
    machine_description,
    measure_computation,
    median,
    parse_arguments,
    print_machine,
    report_tables,
    run_self_child,
    timed,
)

SEED = 0
DEPTH = 100  # documents kept per query: the evaluator's max k (MAP@100), i.e. `mmst evaluate --depth 100`
MMST_KS = (1, 3, 5, 10, 100)
TARGET = ("<=", 1.0)
TREC_MEASURES = {"ndcg_cut.10", "recip_rank", "recall.10", "P.10", "map_cut.10", "success.10"}


def make_task(queries: int, docs: int, dim: int):
    """Seeded random corpus / query vectors and binary qrels; returns ids, vectors and qrels."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    corpus = rng.standard_normal((docs, dim), dtype=np.float32)
    relevant = [rng.choice(docs, size=rng.integers(1, 4), replace=False) for _ in range(queries)]
    query_vectors = np.stack([corpus[rows].mean(axis=0) for rows in relevant])
    query_vectors += rng.standard_normal(query_vectors.shape, dtype=np.float32) * np.float32(4.0)
    query_ids = [f"q{index}" for index in range(queries)]
    corpus_ids = [f"d{index}" for index in range(docs)]
    qrels = {qid: {corpus_ids[row]: 1 for row in rows} for qid, rows in zip(query_ids, relevant)}
    return query_ids, query_vectors, corpus_ids, corpus, qrels


# ------------------------------------------------------------------------------------ child sides


def run_mmst_side(query_ids, query_vectors, corpus_ids, corpus, qrels) -> float:
    from mmst_cli.core.retrieval.evaluation import retrieve, score_run
    from mmst_cli.core.retrieval.tasks import RetrievalTask

    task = RetrievalTask({}, {}, qrels, "bench")
    run = retrieve(query_ids, query_vectors, corpus_ids, corpus, k=DEPTH, similarity="cosine")
    return score_run("bench", run, task, MMST_KS).metrics["ndcg@10"]


class PrecomputedQueries:
    """The model the evaluator asks for query vectors: returns the precomputed rows."""

    def __init__(self, vectors) -> None:
        self.vectors = vectors

    def encode_query(self, inputs, **kwargs):
        assert len(inputs) == len(self.vectors)
        return self.vectors


def run_st_side(query_ids, query_vectors, corpus_ids, corpus, qrels) -> float:
    import torch
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.util import cos_sim

    evaluator = InformationRetrievalEvaluator(
        queries={qid: qid for qid in query_ids},
        corpus={cid: cid for cid in corpus_ids},
        relevant_docs={qid: set(docs) for qid, docs in qrels.items()},
        score_functions={"cosine": cos_sim},
        main_score_function="cosine",
        write_csv=False,
    )
    scores = evaluator.compute_all_metrics(
        PrecomputedQueries(torch.from_numpy(query_vectors)), corpus_embeddings=torch.from_numpy(corpus)
    )
    return float(scores["cosine"]["ndcg@k"][10])


def child_search(side: str, queries: int, docs: int, dim: int) -> dict:
    import mmst_cli.core.retrieval.evaluation  # noqa: F401  (imports torch and sentence_transformers up front)
    import sentence_transformers.sentence_transformer.evaluation  # noqa: F401

    task = make_task(queries, docs, dim)
    measured = measure_computation(lambda: (run_mmst_side if side == "mmst" else run_st_side)(*task))
    ndcg = measured.pop("result")
    return {**measured, "ndcg@10": ndcg}


def child_metrics(queries: int, docs: int, dim: int, repeats: int) -> dict:
    import pytrec_eval

    from mmst_cli.core.retrieval.evaluation import retrieve
    from mmst_cli.core.retrieval.metrics import compute_metrics

    query_ids, query_vectors, corpus_ids, corpus, qrels = make_task(queries, docs, dim)
    # As plain dicts: pytrec_eval reads only dicts, and both sides then time the metrics alone.
    run = dict(retrieve(query_ids, query_vectors, corpus_ids, corpus, k=DEPTH, similarity="cosine"))

    def trec():
        per_query = pytrec_eval.RelevanceEvaluator(qrels, TREC_MEASURES).evaluate(run)
        return sum(values["ndcg_cut_10"] for values in per_query.values()) / len(per_query)

    times = interleaved({
        "mmst": lambda: timed(lambda: compute_metrics(run, qrels, ks=(10,)).means["ndcg@10"]),
        "pytrec_eval": lambda: timed(trec),
    }, repeats, log=False)
    ndcg = {side: runs[0][1] for side, runs in times.items()}
    return {side: [seconds for seconds, _ in runs] for side, runs in times.items()} | {"ndcg@10": ndcg}


# ---------------------------------------------------------------------------------------- driver


def main() -> None:
    parser = common_arguments(__doc__, repeats=3)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of 10,000 queries x 100,000 documents")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--child", choices=["mmst", "st", "metrics"], help=HIDDEN)
    args = parse_arguments(parser)
    queries, docs = round(10_000 * args.scale), round(100_000 * args.scale)
    if args.child in ("mmst", "st"):
        print(json.dumps(child_search(args.child, queries, docs, args.dim)))
        return
    if args.child == "metrics":
        print(json.dumps(child_metrics(queries, docs, args.dim, args.repeats)))
        return

    machine = machine_description()
    print_machine(machine)
    print(f"{queries} queries x {docs} documents x {args.dim} dims, float32, top-{DEPTH}", flush=True)
    size = ["--scale", str(args.scale), "--dim", str(args.dim), "--threads", str(args.threads)]
    runs = interleaved({side: (lambda side=side: run_self_child(__file__, ["--child", side, *size]).json())
                        for side in ("mmst", "st")}, args.repeats)
    ndcg = {side: runs[side][0]["ndcg@10"] for side in runs}
    if abs(ndcg["mmst"] - ndcg["st"]) > 1e-9:
        print(f"  note: NDCG@10 differs: {ndcg}", flush=True)
    mmst_s, st_s = (median([run["seconds"] for run in runs[side]]) for side in ("mmst", "st"))
    mmst_mib, st_mib = (median([run["extra_mib"] for run in runs[side]]) for side in ("mmst", "st"))
    extra = {"runs": runs, "ndcg@10": ndcg}
    rows = [
        Row("search + metrics: time", mmst_s, st_s, "s", mmst_s / st_s, "mmst / ST time", TARGET, extra=extra),
        Row("search + metrics: peak RSS above start", mmst_mib, st_mib, "MiB", mmst_mib / st_mib, "mmst / ST memory",
            TARGET),
    ]
    print("metrics only: compute_metrics vs pytrec_eval", flush=True)
    metrics = run_self_child(__file__, ["--child", "metrics", *size, "--repeats", str(args.repeats)]).json()
    mmst_m, trec_m = median(metrics["mmst"]), median(metrics["pytrec_eval"])
    print(f"  NDCG@10: {metrics['ndcg@10']}", flush=True)
    metric_rows = [Row(f"metrics of {queries} queries x top-{DEPTH}: time", mmst_m, trec_m, "s", mmst_m / trec_m,
                       "mmst / pytrec_eval time", extra=metrics)]
    settings = {"queries": queries, "docs": docs, "dim": args.dim, "depth": DEPTH, "mmst_ks": MMST_KS,
                "repeats": args.repeats, "threads": args.threads, "trec_measures": sorted(TREC_MEASURES)}
    report_tables([
        Table("Evaluation at scale: search + metrics", rows, ("mmst", "ST InformationRetrievalEvaluator")),
        Table("Metrics only", metric_rows, ("mmst compute_metrics", "pytrec_eval")),
    ], machine, settings, args.json_path)


if __name__ == "__main__":
    sys.exit(main())
