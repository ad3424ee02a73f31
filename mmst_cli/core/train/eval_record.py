"""train-embed's data, loaded with a record of its evaluation part for the run folder.

The record (:mod:`mmst_cli.core.retrieval.run_eval_data`, where ``evaluate`` reads it) says which
rows ``--eval-split`` held out, or which ``--eval-data`` or embedded pairs the run scored, so that
``mmst evaluate --model RUN`` and ``--eval-of RUN`` score exactly those.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from mmst_cli.core.data.audio import decode_into_table
from mmst_cli.core.data.tables import PairData, load_pair_data, split_off_eval
from mmst_cli.core.outputs import atomic_path
from mmst_cli.core.retrieval.run_eval_data import RECORD_NAME, eval_record
from mmst_cli.core.train.common import TrainingOptions, is_main_process, load_train_and_eval

#: A column that carries each row's index through the split, removed right after.
_ROW_TAG = "mmst_row_index"


def _without_tag(data: PairData) -> PairData:
    return replace(data, dataset=data.dataset.remove_columns(_ROW_TAG))


def load_pairs_with_eval_record(
    options: TrainingOptions, audio_rate: int | None
) -> tuple[PairData, PairData | None, dict[str, Any] | None]:
    """Training pairs, evaluation pairs (or ``None``) and the evaluation record (or ``None``).

    No ``--data`` reads the embedded emoji pairs (the demo); otherwise ``--data`` with its
    ``--eval-data`` or ``--eval-split`` hold-out, as :func:`~mmst_cli.core.train.common.load_train_and_eval`.
    """
    from mmst_cli.core.models.composition import EMOJI_EVAL, EMOJI_TRAIN

    def load(reference: str, **where) -> PairData:
        # Audio stays undecoded until rows are read, so that DataLoader workers decode it.
        return load_pair_data(
            reference, columns=options.columns, **where, **options.media_options(audio_rate), lazy_audio=True
        )

    split: dict[str, Any] = {}

    def split_off_recording(data: PairData, fraction: float, seed: int) -> tuple[PairData, PairData]:
        tagged = replace(data, dataset=data.dataset.add_column(_ROW_TAG, list(range(len(data.dataset)))))
        train, held_out = split_off_eval(tagged, fraction, seed)
        split.update(rows=len(data.dataset), held_out=[int(row) for row in held_out.dataset[_ROW_TAG]], fraction=fraction, seed=seed)
        return _without_tag(train), _without_tag(held_out)

    common = {"columns": options.columns, "media": options.media_options(None)}
    if options.data is None:
        train, evaluation = load(str(EMOJI_TRAIN)), load(str(EMOJI_EVAL))
        return train, evaluation, eval_record("embedded", evaluation, reference=None, config=None, split=None, **common)
    train, evaluation = load_train_and_eval(options, load, split_off_recording)
    if evaluation is None:
        return train, None, None
    # Evaluation rows are read several times (fingerprinted here, then scored): decode their audio once.
    evaluation = replace(evaluation, dataset=decode_into_table(evaluation.dataset))
    if split:
        record = eval_record(
            "split", evaluation, reference=options.data, config=options.data_config, split=options.split, **split, **common
        )
    else:
        record = eval_record(
            "data", evaluation, reference=options.eval_data, config=options.data_config, split=options.eval_data_split, **common
        )
    return train, evaluation, record


def write_eval_record(output_dir: Path, record: dict[str, Any] | None) -> None:
    """Write ``record`` as the run folder's evaluation record (main process only; none: nothing)."""
    if record is None or not is_main_process():
        return
    with atomic_path(output_dir / RECORD_NAME) as pending:
        pending.write_text(json.dumps(record, indent=2) + "\n", encoding="utf8")
