"""Approximate and quantised indexes of ``mmst index``: recall@10 against exact search, and queries/s,
with FAISS used directly beside them.

Data: random but structured vectors, seeded: ``--clusters`` Gaussian cluster centres (unit variance)
in ``--dim`` dimensions, each document a centre plus ``--spread`` noise per dimension (default 1.5:
the clusters overlap, so an approximate index misses some neighbours), unit length (a cosine
model's vectors); each query is a document plus a little more noise. Sizes
come from ``--sizes`` (default 100,000 and 1,000,000 documents), ``--queries`` queries each.

For every size, exact search (FAISS ``IndexFlatIP``) gives the true top 10. Then each index type
is built and searched twice, alternating: by mmst (``mmst_cli.core.index.vector_index.build`` /
``search``, with the defaults ``mmst index`` picks: ``sqrt(n)`` IVF lists probed 1/16, HNSW
M=32 with efSearch 64, the int8 scalar quantiser, sign-bit binary codes) and by FAISS's own classes
with the same parameters. The table shows both sides' recall@10 and queries/s; the ratio of
queries/s (mmst / FAISS) is mmst's overhead, the target >= 0.9. Binary rows search Hamming codes
alone on both sides; a last info row shows mmst's default re-scoring of 4 x 10 binary candidates
with the float vectors. HNSW is built only up to ``--hnsw-max`` documents (default 100,000: at a
million, two HNSW builds take longer than the rest of the run on two cores). Build seconds are in
the JSON. Both sides use ``--threads`` OpenMP threads (default 1).

    .venv/bin/python bench/index_recall.py [--sizes 100000,1000000] [--dim 256] [--repeats 3]
"""

from __future__ import annotations

import sys
import time

from _common import REPO_ROOT, Row, Table, common_arguments, machine_description, median, parse_arguments, print_machine, report_tables

sys.path.insert(0, str(REPO_ROOT))


def make_data(size: int, dim: int, clusters: int, queries: int, seed: int, spread: float):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    documents = np.empty((size, dim), dtype=np.float32)
    for start in range(0, size, 100_000):  # in blocks: the noise of a million rows at once doubles the peak
        stop = min(start + 100_000, size)
        documents[start:stop] = centres[rng.integers(0, clusters, stop - start)] + spread * rng.normal(size=(stop - start, dim))
    documents /= np.linalg.norm(documents, axis=1, keepdims=True)
    picked = documents[rng.choice(size, queries, replace=False)]
    asked = picked + 0.02 * rng.normal(size=picked.shape).astype(np.float32)
    asked /= np.linalg.norm(asked, axis=1, keepdims=True)
    return documents, asked.astype(np.float32)


def recall_at_10(found, truth) -> float:
    return sum(len(set(row[:10].tolist()) & set(true[:10].tolist())) for row, true in zip(found, truth)) / (10 * len(truth))


def faiss_direct(kind: str, quantize: str, settings: dict, documents):
    """The same index built with FAISS's classes directly, and a search function."""
    import faiss
    import numpy as np

    from mmst_cli.core.index.vector_index import TRAINING_ROWS_PER_LIST

    dim, lists = documents.shape[1], settings["lists"]
    rng = np.random.default_rng(0)
    sample = documents[np.sort(rng.choice(len(documents), min(len(documents), lists * TRAINING_ROWS_PER_LIST), replace=False))]
    if quantize == "binary":
        index = faiss.IndexBinaryFlat(dim) if kind == "flat" else faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(dim), dim, lists)
        if kind == "ivf":
            index.train(np.packbits(sample > 0, axis=1))
            index.nprobe = settings["nprobe"]
        index.add(np.packbits(documents > 0, axis=1))
        return lambda queries: index.search(np.packbits(queries > 0, axis=1), 10)
    if kind == "ivf":
        coarse = faiss.IndexFlatIP(dim)
        if quantize == "none":
            index = faiss.IndexIVFFlat(coarse, dim, lists, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFScalarQuantizer(coarse, dim, lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        index.train(sample)
        index.nprobe = settings["nprobe"]
    else:
        index = faiss.IndexHNSWFlat(dim, settings["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = settings["ef_search"]
    index.add(documents)
    return lambda queries: index.search(queries, 10)


def mmst_side(kind: str, quantize: str, settings: dict, documents, rescore: int = 1):
    from mmst_cli.core.index import vector_index

    index = vector_index.build(documents, settings)
    return lambda queries: vector_index.search(index, queries, 10, settings, vectors=documents, rescore=rescore)


def main() -> None:
    parser = common_arguments(__doc__, repeats=3)
    parser.add_argument("--sizes", default="100000,1000000", help="documents, comma-separated (default 100000,1000000)")
    parser.add_argument("--dim", type=int, default=256, help="vector width (default 256)")
    parser.add_argument("--clusters", type=int, default=1000, help="Gaussian clusters (default 1000)")
    parser.add_argument("--spread", type=float, default=1.5,
                        help="noise per dimension around a unit-variance centre (default 1.5: clusters overlap)")
    parser.add_argument("--queries", type=int, default=1000, help="queries per size (default 1000)")
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="largest size HNSW is built for (default 100000)")
    args = parse_arguments(parser)
    import faiss

    from mmst_cli.core.index import vector_index

    if args.threads > 0:
        faiss.omp_set_num_threads(args.threads)
    machine = machine_description()
    print_machine(machine)
    tables, builds = [], {}
    for size in (int(item) for item in args.sizes.split(",")):
        documents, queries = make_data(size, args.dim, args.clusters, args.queries, seed=0, spread=args.spread)
        exact = faiss.IndexFlatIP(args.dim)
        exact.add(documents)
        started = time.perf_counter()
        _, truth = exact.search(queries, 10)
        exact_qps = len(queries) / (time.perf_counter() - started)
        del exact
        lists = vector_index.default_lists(size)
        settings = {"similarity": "cosine", "lists": lists, "nprobe": vector_index.default_nprobe(lists),
                    "hnsw_m": vector_index.DEFAULT_HNSW_M, "ef_search": vector_index.DEFAULT_EF_SEARCH}
        configs = [("ivf", "none"), ("ivf", "int8"), ("flat", "binary"), ("ivf", "binary")]
        if size <= args.hnsw_max:
            configs.insert(1, ("hnsw", "none"))
        rows = [Row(f"exact (flat), {size:,} docs", 1.0, 1.0, "recall", 1.0, "-", None, {"qps": exact_qps})]
        for kind, quantize in configs:
            config = dict(settings, index=kind, quantize=quantize)
            name = f"{kind}{'' if quantize == 'none' else ' ' + quantize}"
            print(f"{size:,} documents: building {name} (mmst, then FAISS)", flush=True)
            sides = {}
            for side, maker in (("mmst", mmst_side), ("faiss", faiss_direct)):
                began = time.perf_counter()
                sides[side] = maker(kind, quantize, config, documents)
                builds[f"{size} {name} {side}"] = round(time.perf_counter() - began, 2)
            seconds = {"mmst": [], "faiss": []}
            found = {}
            for repeat in range(args.repeats):
                for side in (("mmst", "faiss") if repeat % 2 == 0 else ("faiss", "mmst")):
                    began = time.perf_counter()
                    found[side] = sides[side](queries)[1]
                    seconds[side].append(time.perf_counter() - began)
            qps = {side: len(queries) / median(values) for side, values in seconds.items()}
            recall = {side: recall_at_10(found[side], truth) for side in found}
            extra = {"recall_mmst": recall["mmst"], "recall_faiss": recall["faiss"], "qps_mmst": qps["mmst"],
                     "qps_faiss": qps["faiss"], "exact_qps": exact_qps}  # fmt: skip
            rows.append(Row(f"{name}: recall@10", recall["mmst"], recall["faiss"], "", recall["mmst"] / max(recall["faiss"], 1e-9),
                            "mmst / FAISS", None, extra))  # fmt: skip
            rows.append(Row(f"{name}: queries/s", qps["mmst"], qps["faiss"], "q/s", qps["mmst"] / qps["faiss"],
                            "mmst / FAISS", (">=", 0.9), extra))  # fmt: skip
            if quantize == "binary" and kind == "flat":
                rescored = mmst_side(kind, quantize, config, documents, rescore=vector_index.DEFAULT_BINARY_RESCORE)
                began = time.perf_counter()
                hits = rescored(queries)[1]
                rescored_qps = len(queries) / (time.perf_counter() - began)
                rows.append(Row(f"binary + re-score 4x: recall@10 (q/s {rescored_qps:.0f})", recall_at_10(hits, truth),
                                recall["faiss"], "", recall_at_10(hits, truth) / max(recall["faiss"], 1e-9),
                                "vs FAISS Hamming only", None, {"qps": rescored_qps}))  # fmt: skip
            del sides
        title = (f"{size:,} documents x {args.dim} dims, {args.queries} queries, {lists} IVF lists, nprobe "
                 f"{settings['nprobe']}; exact search {exact_qps:.0f} q/s")  # fmt: skip
        tables.append(Table(title, rows, ("mmst", "FAISS direct")))
        del documents
    settings_out = {"sizes": args.sizes, "dim": args.dim, "clusters": args.clusters, "spread": args.spread, "queries": args.queries,
                    "threads": args.threads, "repeats": args.repeats, "build_seconds": builds}  # fmt: skip
    report_tables(tables, machine, settings_out, args.json_path)


if __name__ == "__main__":
    main()
