"""Multi-vector (MaxSim) retrieval scoring: mmst evaluate's chunked MaxSim search + metrics against
Sentence Transformers' ``MultiVectorInformationRetrievalEvaluator``.

Data: precomputed random token vectors, no model: ``--queries`` queries of 16 tokens and ``--docs``
documents of 32 to 96 tokens (64 on average), ``--dim`` float32 dimensions (default 128, ColBERT's),
L2-normalised, seeded. Each query has one relevant document and is that document's first 16
tokens plus Gaussian noise, so the metrics are neither 0 nor 1.

Both sides get a stub model whose ``encode_query`` / ``encode_document`` return the precomputed
token tensors of the ids they are given, so only the search and the metrics are measured:

* mmst: ``mmst_cli.core.retrieval.maxsim.maxsim_search`` (corpus chunks of 1024 documents against all
  queries, running top-100, ST's ``util.maxsim`` with its default element budget) and ``score_run``
  (``compute_metrics``) with ``ks = 1, 3, 5, 10, 100``;
* Sentence Transformers: ``MultiVectorInformationRetrievalEvaluator.compute_all_metrics`` with its
  default cut-offs (a top-100 search), ``corpus_chunk_size`` 1024 as mmst's, and
  ``score_functions={"maxsim": maxsim}``.

Time is the wall time of that computation (data generation and imports excluded); memory the peak
RSS above the RSS once the token vectors are in memory, each side in a fresh process, alternating
over ``--repeats`` runs (medians). NDCG@10 must agree (every query has one relevant document, and
random float scores do not tie). Target: mmst / ST <= 1 for memory (both bound the scoring
intermediate the same way) and <= 1.25 for time (mmst re-sorts each chunk's top-k; information).

    .venv/bin/python bench/maxsim_scale.py [--scale 1.0] [--repeats 3]
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
)

SEED = 0
DEPTH = 100  # the evaluator's max k (MAP@100)
QUERY_TOKENS = 16
CORPUS_CHUNK = 1024
MMST_KS = (1, 3, 5, 10, 100)


def make_task(queries: int, docs: int, dim: int):
    """Seeded token vectors per query and document id, and one relevant document per query."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    lengths = torch.randint(32, 97, (docs,), generator=generator).tolist()
    corpus = {f"d{i}": torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=-1) for i, n in enumerate(lengths)}
    relevant = torch.randint(0, docs, (queries,), generator=generator).tolist()
    query_tokens = {}
    for index, doc in enumerate(relevant):
        noisy = corpus[f"d{doc}"][:QUERY_TOKENS] + 0.4 * torch.randn(QUERY_TOKENS, dim, generator=generator)
        query_tokens[f"q{index}"] = torch.nn.functional.normalize(noisy, dim=-1)
    qrels = {f"q{index}": {f"d{doc}": 1} for index, doc in enumerate(relevant)}
    return query_tokens, corpus, qrels


class PrecomputedTokens:
    """A stand-in MultiVectorEncoder: the token vectors of the ids it is asked to encode."""

    similarity_fn_name = "maxsim"
    prompts: dict[str, str] = {}

    def __init__(self, queries, corpus) -> None:
        self.vectors = {**queries, **corpus}

    def encode(self, inputs, **kwargs):
        return [self.vectors[item] for item in inputs]

    encode_query = encode_document = encode


def run_mmst_side(queries, corpus, qrels) -> float:
    from mmst_cli.core.retrieval.evaluation import SearchRun, score_run
    from mmst_cli.core.retrieval.maxsim import maxsim_search
    from mmst_cli.core.retrieval.tasks import RetrievalTask

    query_ids, corpus_ids = list(queries), list(corpus)
    [(scores, indices)], _ = maxsim_search(PrecomputedTokens(queries, corpus), query_ids, corpus_ids, DEPTH, corpus_chunk=CORPUS_CHUNK)
    run = SearchRun(query_ids, corpus_ids, scores, indices)
    return score_run("bench", run, RetrievalTask({}, {}, qrels, "bench"), MMST_KS).metrics["ndcg@10"]


def run_st_side(queries, corpus, qrels) -> float:
    from sentence_transformers.multi_vector_encoder.evaluation import MultiVectorInformationRetrievalEvaluator
    from sentence_transformers.util import maxsim

    evaluator = MultiVectorInformationRetrievalEvaluator(
        queries={qid: qid for qid in queries}, corpus={cid: cid for cid in corpus},
        relevant_docs={qid: set(docs) for qid, docs in qrels.items()}, corpus_chunk_size=CORPUS_CHUNK,
        score_functions={"maxsim": maxsim}, write_csv=False,
    )  # fmt: skip
    scores = evaluator.compute_all_metrics(PrecomputedTokens(queries, corpus))
    return float(scores["maxsim"]["ndcg@k"][10])


def child_search(side: str, queries: int, docs: int, dim: int) -> dict:
    import mmst_cli.core.retrieval.evaluation  # noqa: F401  (imports torch and sentence_transformers up front)
    import sentence_transformers.multi_vector_encoder.evaluation  # noqa: F401

    task = make_task(queries, docs, dim)
    measured = measure_computation(lambda: (run_mmst_side if side == "mmst" else run_st_side)(*task))
    ndcg = measured.pop("result")
    return {**measured, "ndcg@10": ndcg}


def main() -> None:
    parser = common_arguments(__doc__, repeats=3)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of 500 queries x 5,000 documents")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--child", choices=["mmst", "st"], help=HIDDEN)
    args = parse_arguments(parser)
    queries, docs = round(500 * args.scale), round(5_000 * args.scale)
    if args.child:
        print(json.dumps(child_search(args.child, queries, docs, args.dim)))
        return

    machine = machine_description()
    print_machine(machine)
    print(f"{queries} queries ({QUERY_TOKENS} tokens) x {docs} documents (32-96 tokens) x {args.dim} dims, "
          f"top-{DEPTH}", flush=True)  # fmt: skip
    size = ["--scale", str(args.scale), "--dim", str(args.dim), "--threads", str(args.threads)]
    runs = interleaved({side: (lambda side=side: run_self_child(__file__, ["--child", side, *size]).json())
                        for side in ("mmst", "st")}, args.repeats)
    ndcg = {side: runs[side][0]["ndcg@10"] for side in runs}
    if abs(ndcg["mmst"] - ndcg["st"]) > 1e-9:
        print(f"  note: NDCG@10 differs: {ndcg}", flush=True)
    mmst_s, st_s = (median([run["seconds"] for run in runs[side]]) for side in ("mmst", "st"))
    mmst_mib, st_mib = (median([run["extra_mib"] for run in runs[side]]) for side in ("mmst", "st"))
    rows = [
        Row("MaxSim search + metrics: time", mmst_s, st_s, "s", mmst_s / st_s, "mmst / ST time", ("<=", 1.25),
            extra={"runs": runs, "ndcg@10": ndcg}),
        Row("MaxSim search + metrics: peak RSS above start", mmst_mib, st_mib, "MiB", mmst_mib / st_mib,
            "mmst / ST memory", ("<=", 1.0)),
    ]
    settings = {"queries": queries, "docs": docs, "dim": args.dim, "query_tokens": QUERY_TOKENS,
                "doc_tokens": "32-96", "depth": DEPTH, "corpus_chunk": CORPUS_CHUNK, "mmst_ks": MMST_KS,
                "repeats": args.repeats, "threads": args.threads}
    report_tables([Table("Multi-vector evaluation: MaxSim search + metrics", rows,
                         ("mmst", "ST MultiVectorInformationRetrievalEvaluator"))], machine, settings, args.json_path)


if __name__ == "__main__":
    sys.exit(main())
