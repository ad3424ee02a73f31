"""Result files of ``mmst evaluate``, written atomically: per-query jsonl, the Matryoshka plot
(matplotlib) and mteb result files.

mteb result files follow the layout of mteb 2.x (checked against ``mteb.results.TaskResult`` of
mteb 2.26): ``<folder>/results/<model name, "/" as "__">/<revision>/<TaskName>.json`` beside a
``model_meta.json``, which is where ``mteb.ResultCache(<folder>)`` looks. A task file holds
``task_name``, ``dataset_revision``, ``mteb_version``, ``evaluation_time``, ``kg_co2_emissions``,
``date`` and ``scores``: split -> a list of one entry per subset, each with the metrics under
mteb's names (``ndcg_at_10``, ...), ``main_score``, ``hf_subset`` and ``languages``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mmst_cli.core.outputs import atomic_path

#: mmst metric -> mteb's name for it (mteb's ``hit_rate`` is trec_eval's ``success``).
MTEB_METRIC_NAMES = {
    "ndcg": "ndcg_at",
    "map": "map_at",
    "recall": "recall_at",
    "precision": "precision_at",
    "mrr": "mrr_at",
    "accuracy": "hit_rate_at",
}

#: mteb's revision folder name when a model's revision is not known.
UNKNOWN_REVISION = "no_revision_available"


def write_jsonl_atomically(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line."""
    with atomic_path(path) as temporary, temporary.open("w", encoding="utf8") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")


def stage_metrics(report: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """``(name, metrics)`` of each table an ``mmst evaluate`` report shows: one per swept dimension
    (or the retrieval stage), then the reranking stage if any."""
    stages = [(stage["name"], stage["metrics"]) for stage in report["stages"]]
    if "dims" in report:
        stages = [(f"dim {entry['dim']}", entry["metrics"]) for entry in report["dims"]] + stages[1:]
    return stages


def plot_matryoshka_sweep(sweep: list[dict[str, Any]], path: Path, metric: str = "ndcg@10") -> None:
    """A PNG line plot of ``metric`` against embedding dimension (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted((entry["dim"], entry["metrics"][metric]) for entry in sweep)
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    axes.plot([d for d, _ in points], [v for _, v in points], marker="o")
    axes.set_xscale("log", base=2)
    axes.set_xticks([d for d, _ in points], [str(d) for d, _ in points])
    axes.set_xlabel("embedding dimension")
    axes.set_ylabel(metric)
    axes.set_title(f"Matryoshka sweep: {metric}")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)


def mteb_metric_name(metric: str) -> str:
    """``"ndcg@10"`` -> ``"ndcg_at_10"``, ``"accuracy@5"`` -> ``"hit_rate_at_5"``."""
    name, _, k = metric.partition("@")
    return f"{MTEB_METRIC_NAMES[name]}_{k}"


def qrels_revision(qrels: dict[str, dict[str, int]]) -> str:
    """A revision naming exactly the judgements scored: the first 16 hex digits of their SHA-1."""
    canonical = json.dumps(qrels, sort_keys=True, separators=(",", ":"))
    return "qrels-sha1-" + hashlib.sha1(canonical.encode()).hexdigest()[:16]


def mteb_model_meta(description: dict[str, Any], name: str, *, uses_prompts: bool) -> dict[str, Any]:
    """mteb's ``model_meta.json`` fields from :func:`mmst_cli.core.models.description.describe_model`."""
    mteb_modalities = {"text", "image", "audio", "video"}
    return {
        "name": name,
        "revision": UNKNOWN_REVISION,
        "release_date": None,
        "languages": None,
        "n_parameters": description["parameters"],
        "memory_usage_mb": None,
        "max_tokens": description["max_seq_length"],
        "embed_dim": description["embedding_dimension"],
        "license": None,
        "open_weights": True,
        "public_training_code": None,
        "public_training_data": None,
        "framework": ["Sentence Transformers", "PyTorch"],
        "similarity_fn_name": description["similarity_fn_name"],
        "use_instructions": uses_prompts,
        "training_datasets": None,
        "modalities": [m for m in description["modalities"] if m in mteb_modalities] or ["text"],
        "model_type": ["dense"],
        "loader": None,
    }


def write_mteb_results(
    folder: Path,
    *,
    model_meta: dict[str, Any],
    task_name: str,
    split: str,
    languages: list[str],
    metrics: dict[str, float],
    main_metric: str,
    dataset_revision: str,
    evaluation_time: float,
) -> Path:
    """Write one task's scores as an mteb result file, and the model's ``model_meta.json``.

    Args:
        folder: The results root (mteb's cache folder); files go below ``results/``.
        model_meta: mteb's model metadata; ``name`` and ``revision`` place the files.
        task_name: The task's name, also the file's name.
        split: The split the scores belong to, e.g. ``test``.
        languages: ISO 639-3 language-script codes of the data, e.g. ``["eng-Latn"]``.
        metrics: mmst's ``metric@k`` values.
        main_metric: The ``metric@k`` that becomes ``main_score``.
        dataset_revision: What identifies the data (see :func:`qrels_revision`).
        evaluation_time: Seconds the evaluation took.

    Returns:
        The task file's path.
    """
    scores = {mteb_metric_name(metric): value for metric, value in metrics.items()}
    entry = {**scores, "main_score": metrics[main_metric], "hf_subset": "default", "languages": languages}
    result = {
        "dataset_revision": dataset_revision,
        "task_name": task_name,
        # The scores come from mmst, not from a run of mteb: the version is left unknown.
        "mteb_version": None,
        "scores": {split: [entry]},
        "evaluation_time": evaluation_time,
        "kg_co2_emissions": None,
        "date": time.time(),
    }
    model_folder = folder / "results" / model_meta["name"].replace("/", "__").replace(" ", "_") / model_meta["revision"]
    task_file = model_folder / f"{task_name}.json"
    for path, content in ((model_folder / "model_meta.json", model_meta), (task_file, result)):
        with atomic_path(path) as temporary:
            temporary.write_text(json.dumps(content, indent=2) + "\n", encoding="utf8")
    return task_file


def write_model_mteb_results(
    folder: Path,
    model,
    source,
    report: dict[str, Any],
    qrels: dict[str, dict[str, int]],
    *,
    model_name: str | None,
    task_name: str | None,
    split: str,
    languages: list[str],
    seconds: float,
) -> Path:
    """Write an ``mmst evaluate`` report's main scores as mteb results (:func:`write_mteb_results`).

    Args:
        folder: The results root.
        model: The evaluated SentenceTransformer.
        source: Where it came from (:func:`mmst_cli.core.models.locate.locate_model`).
        report: The evaluation report (``data``, ``metrics``, ``main_metric``, ``prompts``).
        qrels: The judgements scored.
        model_name: The name to file the results under; ``None`` for the Hub id, or the model
            folder's name (the run folder's name for a trained model in ``runs/NAME/model``).
        task_name: The task's name; ``None`` for :func:`default_task_name` of the data.
        split: The split the scores belong to.
        languages: ISO 639-3 language-script codes of the data.
        seconds: How long the evaluation took.

    Returns:
        The task file's path.
    """
    from mmst_cli.core.models.description import describe_model

    location = Path(source.location)
    if model_name is None and location.is_dir():
        # mmst's run folders keep the model in runs/NAME/model: the run's name tells models apart.
        model_name = location.parent.name if location.name == "model" and location.parent.name else location.name
    uses_prompts = any(report["prompts"].values()) or any((getattr(model, "prompts", None) or {}).values())
    return write_mteb_results(
        folder,
        model_meta=mteb_model_meta(describe_model(model, source), model_name or source.reference, uses_prompts=uses_prompts),
        task_name=task_name or default_task_name(report["data"]),
        split=split,
        languages=languages,
        metrics=report["metrics"],
        main_metric=report["main_metric"],
        dataset_revision=qrels_revision(qrels),
        evaluation_time=seconds,
    )


def default_task_name(data: str) -> str:
    """The name of ``--data``: a folder's or Hub dataset's last part, a file's name without extension."""
    path = Path(data.rstrip("/"))
    return path.stem if path.is_file() else path.name
