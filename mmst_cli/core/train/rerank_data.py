"""Reranker training data: pointwise, pair and listwise rows read into one (query, document, label)
shape, checked before any model loads, and reshaped into the columns each loss expects.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mmst_cli.core.data.documents import RenderSettings
from mmst_cli.core.data.tables import (
    NON_CONTENT_COLUMNS,
    PairData,
    load_table,
    prepare_media,
    select_columns,
)
from mmst_cli.core.errors import MmstError

#: Label columns, in the order they are looked for (Sentence Transformers' label column names).
LABEL_COLUMNS = ("label", "labels", "score", "scores")
#: A text column that carries each row's index through :func:`prepare_media` (which drops rows with
#: ``--skip-bad``), so labels and groups stay aligned; removed right after.
_ROW_TAG = "mmst_row_tag"


@dataclass
class RerankData:
    """Validated (query, document, label) rows, grouped by query.

    Attributes:
        queries, documents: One value per row, as stored (image cells undecoded: ``{"bytes",
            "path"}``; image paths absolute; audio decoded at the model's rate).
        labels: One float per row.
        groups: Per row, the index of its query (identical queries share one).
        query_feature, document_feature: The ``datasets`` features of the two columns.
        column_modalities: ``{"query": modality, "document": modality}``.
        source: Where the data came from.
        layout: ``pointwise``, ``pairs`` or ``listwise``.
        input_rows: Rows in the source (before expansion or flattening).
        skipped_rows: Rows (documents, for listwise data) dropped for bad media with ``--skip-bad``.
    """

    queries: list
    documents: list
    labels: list[float]
    groups: list[int]
    query_feature: Any
    document_feature: Any
    column_modalities: dict[str, str]
    source: str
    layout: str
    input_rows: int
    skipped_rows: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def num_queries(self) -> int:
        return len(set(self.groups))

    def as_pair_data(self) -> PairData:
        """The column modalities in the form :func:`check_modalities` takes."""
        return PairData(None, dict(self.column_modalities), self.source, self.skipped_rows)

    def subset(self, groups: set[int], source: str) -> RerankData:
        rows = [row for row, group in enumerate(self.groups) if group in groups]
        renumber = {group: index for index, group in enumerate(dict.fromkeys(self.groups[row] for row in rows))}
        return replace(
            self,
            queries=[self.queries[row] for row in rows],
            documents=[self.documents[row] for row in rows],
            labels=[self.labels[row] for row in rows],
            groups=[renumber[self.groups[row]] for row in rows],
            source=source,
            notes=[],
        )

    def by_query(self) -> list[tuple[int, list[int]]]:
        """``(group, [row, ...])`` per query, in first-appearance order."""
        grouped: dict[int, list[int]] = {}
        for row, group in enumerate(self.groups):
            grouped.setdefault(group, []).append(row)
        return list(grouped.items())


def relevance(label: float) -> int:
    """The qrels relevance of a label: integers are graded relevance, fractions relevant from 0.5."""
    return int(label) if float(label).is_integer() else int(label >= 0.5)


def _is_list(feature) -> bool:
    import datasets

    return isinstance(feature, (datasets.List, datasets.LargeList))


def _undecoded(feature):
    """The same feature with images left as ``{"bytes", "path"}`` (inside lists too)."""
    import datasets

    if isinstance(feature, datasets.Image):
        return datasets.Image(decode=False)
    if isinstance(feature, datasets.Audio):
        return datasets.Audio(decode=False)
    if isinstance(feature, datasets.List):
        return datasets.List(_undecoded(feature.feature))
    if isinstance(feature, datasets.LargeList):
        return datasets.LargeList(_undecoded(feature.feature))
    return feature


def _decoding(feature):
    """The feature to store undecoded cells under, decoding again when read (images)."""
    import datasets

    if isinstance(feature, datasets.Image):
        return datasets.Image()
    return feature


def _raw(table, column: str) -> tuple[list, Any]:
    """A column's values as stored (images undecoded) and the feature that decodes them."""
    feature = table.features[column]
    undecoded = _undecoded(feature)
    if undecoded != feature:
        table = table.cast_column(column, undecoded)
    return list(table[column]), _decoding(feature)


def _identity(value) -> str:
    """A key that is equal for identical queries (texts, paths, image bytes, audio samples)."""
    if isinstance(value, str):
        return "s:" + value
    if isinstance(value, dict):
        if value.get("bytes"):
            return "b:" + hashlib.sha1(value["bytes"]).hexdigest()
        if value.get("path"):
            return "p:" + str(value["path"])
        if "array" in value:
            import numpy as np

            samples = np.asarray(value["array"], dtype=np.float32).tobytes()
            return f"a{value.get('sampling_rate')}:" + hashlib.sha1(samples).hexdigest()
    return "r:" + repr(value)


def _groups(queries: list) -> list[int]:
    index: dict[str, int] = {}
    return [index.setdefault(_identity(value), len(index)) for value in queries]


def _label_column(table, requested: str | None, source: str) -> str | None:
    if requested:
        if requested not in table.column_names:
            raise MmstError(f"data {source!r} has no column {requested!r}; its columns are {table.column_names}; fix --label-column")
        return requested
    return next((name for name in LABEL_COLUMNS if name in table.column_names), None)


def _float_labels(values: list, column: str, source: str, *, row_offset: int = 0) -> list[float]:
    labels = []
    for row, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise MmstError(
                f"data {source!r}: row {row + 1 + row_offset}, column {column!r}: label {value!r} is not a number"
            )
        labels.append(float(value))
    return labels


def _content_columns(table, columns: list[str] | None, label: str | None) -> list[str]:
    if columns is not None:
        return [name for name in columns if name != label]
    return [
        name
        for name in table.column_names
        if name != label and name.lower() not in NON_CONTENT_COLUMNS and not name.lower().endswith("_id")
    ]


def _validated(table, source: str, media: dict[str, Any]) -> tuple[PairData, list[int]]:
    """:func:`prepare_media` on ``table`` plus the indices of the rows it kept."""
    tagged = table.add_column(_ROW_TAG, [f"#{row}" for row in range(len(table))])
    data = prepare_media(tagged, source, **media)
    kept = [int(tag[1:]) for tag in data.dataset[_ROW_TAG]]
    modalities = {column: modality for column, modality in data.column_modalities.items() if column != _ROW_TAG}
    table = data.dataset.remove_columns(_ROW_TAG)
    return PairData(
        table, modalities, source, data.skipped_rows, notes=data.notes, frame_list_columns=data.frame_list_columns
    ), kept


def _unify_documents(columns: list[tuple[list, Any]], modalities: list[str], source: str, names: list[str]):
    """Values of several document columns under one feature (image paths and Image cells mix)."""
    import datasets

    features = [feature for _, feature in columns]
    if all(feature == features[0] for feature in features):
        return columns, features[0], modalities[0]
    if set(modalities) == {"image"}:
        unified = []
        for values, feature in columns:
            if isinstance(feature, datasets.Image):
                unified.append((values, feature))
            else:
                unified.append(([{"bytes": None, "path": value} for value in values], datasets.Image()))
        return unified, datasets.Image(), "image"
    raise MmstError(
        f"data {source!r}: document columns {names} hold different kinds of input ({', '.join(modalities)}); "
        "positives and negatives must all be text, or all images, or all audio"
    )


def load_rerank_data(
    reference: str,
    *,
    config: str | None = None,
    split: str | None = None,
    columns: list[str] | None = None,
    label_column: str | None = None,
    negatives_per_positive: int | None = None,
    media_root: Path | None = None,
    audio_sampling_rate: int | None = None,
    skip_bad: bool = False,
    allow_remote_media: bool = False,
    allow_outside_root: bool = False,
    pdf: RenderSettings = RenderSettings(),
) -> RerankData:
    """Load pointwise, pair or listwise data (see the module docstring) as grouped rows."""
    import datasets

    media = {
        "media_root": media_root,
        "audio_sampling_rate": audio_sampling_rate,
        "skip_bad": skip_bad,
        "allow_remote_media": allow_remote_media,
        "allow_outside_root": allow_outside_root,
        "pdf": pdf,
    }
    table = load_table(reference, config=config, split=split)
    label = _label_column(table, label_column, reference)
    content = _content_columns(table, columns, label)
    missing = [name for name in content if name not in table.column_names]
    if missing:
        raise MmstError(f"data {reference!r} has no column {missing[0]!r}; its columns are {table.column_names}; fix --columns")
    listwise = any(_is_list(table.features[name]) for name in content) or (
        label is not None and _is_list(table.features[label])
    )

    if listwise:
        if len(content) != 2 or not _is_list(table.features[content[1]]) or _is_list(table.features[content[0]]):
            raise MmstError(
                f"data {reference!r} holds lists, so it is read as listwise rows (query, [documents], [labels]), but its "
                f"content columns are {content}; pass --columns query,documents"
            )
        if label is None or not _is_list(table.features[label]):
            raise MmstError(
                f"data {reference!r}: listwise rows need a list of labels per row (a 'labels' column, or --label-column)"
            )
        query, docs = content
        queries, query_feature = _raw(table, query)
        document_lists, list_feature = _raw(table, docs)
        label_lists = table[label]
        flat_queries, flat_documents, flat_labels, flat_rows, empty = [], [], [], [], 0
        for row, (value, documents, labels) in enumerate(zip(queries, document_lists, label_lists)):
            documents, labels = documents or [], labels or []
            if len(documents) != len(labels):
                raise MmstError(
                    f"data {reference!r}: row {row + 1} has {len(documents)} documents but {len(labels)} labels"
                )
            if not documents:
                empty += 1
            flat_labels.extend(_float_labels(labels, label, reference, row_offset=row))
            flat_queries.extend([value] * len(documents))
            flat_documents.extend(documents)
            flat_rows.extend([row] * len(documents))
        document_feature = _decoding(list_feature.feature)
        flat = datasets.Dataset.from_dict(
            {query: flat_queries, docs: flat_documents},
            features=datasets.Features({query: query_feature, docs: document_feature}),
        )
        validated, kept = _validated(flat, reference, media)
        queries, query_feature = _raw(validated.dataset, query)
        documents, document_feature = _raw(validated.dataset, docs)
        labels = [flat_labels[index] for index in kept]
        modalities = {"query": validated.column_modalities[query], "document": validated.column_modalities[docs]}
        data = RerankData(
            queries, documents, labels, _groups(queries), query_feature, document_feature, modalities,
            reference, "listwise", len(table), validated.skipped_rows, notes=list(validated.notes),
        )  # fmt: skip
        if empty:
            data.notes.append(f"{empty} listwise rows without documents ignored")
        return data

    if label is not None:
        if len(content) != 2:
            raise MmstError(
                f"data {reference!r} has a label column {label!r}, so it is read as pointwise (query, document, label) "
                f"rows, but its content columns are {content}; pass --columns query,document"
            )
        labels_all = _float_labels(table[label], label, reference)
        validated, kept = _validated(select_columns(table, content, reference), reference, media)
        query, document = content
        queries, query_feature = _raw(validated.dataset, query)
        documents, document_feature = _raw(validated.dataset, document)
        modalities = {"query": validated.column_modalities[query], "document": validated.column_modalities[document]}
        return RerankData(
            queries, documents, [labels_all[index] for index in kept], _groups(queries), query_feature,
            document_feature, modalities, reference, "pointwise", len(table), validated.skipped_rows, notes=list(validated.notes),
        )  # fmt: skip

    validated = prepare_media(select_columns(table, content, reference), reference, **media)
    query, positive, *negatives = content
    if negatives_per_positive is not None:
        negatives = negatives[:negatives_per_positive]
    document_columns = [positive, *negatives]
    queries_one, query_feature = _raw(validated.dataset, query)
    raw_documents = [_raw(validated.dataset, name) for name in document_columns]
    raw_documents, document_feature, document_modality = _unify_documents(
        raw_documents, [validated.column_modalities[name] for name in document_columns], reference, document_columns
    )
    queries, documents, labels = [], [], []
    for row, value in enumerate(queries_one):
        for position, (values, _) in enumerate(raw_documents):
            queries.append(value)
            documents.append(values[row])
            labels.append(1.0 if position == 0 else 0.0)
    modalities = {"query": validated.column_modalities[query], "document": document_modality}
    return RerankData(
        queries, documents, labels, _groups(queries), query_feature, document_feature, modalities,
        reference, "pairs", len(table), validated.skipped_rows, notes=list(validated.notes),
    )  # fmt: skip


def split_queries(data: RerankData, fraction: float, seed: int) -> tuple[RerankData, RerankData]:
    """Hold out ``fraction`` of the *queries* (with all their candidates) for evaluation (``--eval-split``)."""
    groups = sorted(set(data.groups))
    held = round(fraction * len(groups))
    if held < 1 or held >= len(groups):
        raise MmstError(f"--eval-split {fraction} leaves an empty split of {len(groups)} queries")
    shuffled = groups[:]
    random.Random(seed).shuffle(shuffled)
    evaluation = set(shuffled[:held])
    return (
        data.subset(set(groups) - evaluation, data.source),
        data.subset(evaluation, f"{data.source} (held-out {fraction:g} of queries)"),
    )


# ------------------------------------------------------------------------------------------------
# Shapes for the losses
# ------------------------------------------------------------------------------------------------


def _dataset(columns: dict[str, list], features: dict[str, Any]):
    import datasets

    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def pointwise_dataset(data: RerankData):
    """(query, document, label) rows."""
    import datasets

    return _dataset(
        {"query": data.queries, "document": data.documents, "label": data.labels},
        {"query": data.query_feature, "document": data.document_feature, "label": datasets.Value("float32")},
    )


def listwise_dataset(data: RerankData):
    """One (query, [documents], [labels]) row per query."""
    import datasets

    queries, documents, labels = [], [], []
    for _, rows in data.by_query():
        queries.append(data.queries[rows[0]])
        documents.append([data.documents[row] for row in rows])
        labels.append([data.labels[row] for row in rows])
    return _dataset(
        {"query": queries, "documents": documents, "labels": labels},
        {
            "query": data.query_feature,
            "documents": datasets.List(data.document_feature),
            "labels": datasets.List(datasets.Value("float32")),
        },
    )


def contrastive_dataset(data: RerankData, negatives_per_positive: int | None) -> tuple[Any, int, int]:
    """(query, positive, negative_1..k) rows: one per relevant document, negatives from its query.

    Every row needs the same number of hard negatives: ``k`` is the fewest any query with a
    positive has (capped by ``negatives_per_positive``); a query with more hands them out in turn.
    Returns the dataset, ``k`` and the number of queries without a relevant document (dropped).
    """
    per_query = []
    dropped = 0
    for _, rows in data.by_query():
        positives = [row for row in rows if relevance(data.labels[row]) >= 1]
        negatives = [row for row in rows if relevance(data.labels[row]) < 1]
        if not positives:
            dropped += 1
            continue
        per_query.append((rows[0], positives, negatives))
    if not per_query:
        raise MmstError(
            f"data {data.source!r}: no query has a relevant document (label >= 1, or >= 0.5 for fractions); "
            "cmnrl needs positives"
        )
    k = min(len(negatives) for _, _, negatives in per_query)
    if negatives_per_positive is not None:
        k = min(k, negatives_per_positive)
    columns: dict[str, list] = {"query": [], "positive": [], **{f"negative_{i + 1}": [] for i in range(k)}}
    for query_row, positives, negatives in per_query:
        for index, positive in enumerate(positives):
            columns["query"].append(data.queries[query_row])
            columns["positive"].append(data.documents[positive])
            for i in range(k):
                columns[f"negative_{i + 1}"].append(data.documents[negatives[(index * k + i) % len(negatives)]])
    features = {"query": data.query_feature, **{name: data.document_feature for name in columns if name != "query"}}
    return _dataset(columns, features), k, dropped


def training_dataset(data: RerankData, loss: str, negatives_per_positive: int | None, log=print):
    """The training data in the shape ``loss`` reads (see the module docstring)."""
    if any(label < 0 for label in data.labels):
        raise MmstError(f"data {data.source!r} has negative labels; labels must be 0 or more")
    if loss == "bce":
        high = max(data.labels)
        if high > 1:
            raise MmstError(
                f"--loss bce needs labels between 0 and 1, but data {data.source!r} has labels up to {high:g}; "
                "use a listwise loss (lambda, listnet, plistmle) for graded labels, or rescale them"
            )
        if len(set(data.labels)) == 1:
            only = f"{data.labels[0]:g} " + ("(no negatives)" if data.labels[0] > 0 else "(no positives)")
            raise MmstError(
                f"--loss bce on data {data.source!r}: every label is {only}, so the reranker would learn nothing; "
                "add rows of the other label, give negative columns (query, positive, negative...), "
                "or use --loss cmnrl, which takes in-batch negatives"
            )
        dataset = pointwise_dataset(data)
        log(f"bce: {len(dataset)} (query, document, label) rows")
        return dataset
    if loss == "cmnrl":
        dataset, k, dropped = contrastive_dataset(data, negatives_per_positive)
        log(
            f"cmnrl: {len(dataset)} (query, positive, {k} hard negatives) rows"
            + (f"; {dropped} queries without a relevant document left out" if dropped else "")
        )
        return dataset
    dataset = listwise_dataset(data)
    informative = sum(
        1 for _, rows in data.by_query() if len({data.labels[row] for row in rows}) > 1
    )
    if informative == 0:
        raise MmstError(
            f"--loss {loss} learns from the order within each query's list, but no query in {data.source!r} has two "
            "documents with different labels; add negatives (pair data or more rows per query) or use --loss bce"
        )
    lengths = [len(rows) for _, rows in data.by_query()]
    log(f"{loss}: {len(dataset)} query lists of {min(lengths)}-{max(lengths)} documents")
    return dataset


