"""The model card (README.md) of the models mmst trains: Sentence Transformers' own card, filled in.

Sentence Transformers writes the card when a model is saved, from ``model.model_card_data``: the
architecture, a usage snippet built from the training data (one encode call per side, so a
text -> image model shows both), the datasets, the loss with its parameters, the hyperparameters,
the training logs and the evaluators' metrics. mmst fills what the trainer cannot know: the data's
real names, the scores before and after training, and how to load the folder (its path, and
``trust_remote_code=True`` when it carries mmst's own module code, see
:mod:`mmst_cli.core.models.portable`) instead of the ``"sentence_transformers_model_id"`` placeholder.
"""

from __future__ import annotations

import json
import os

from mmst_cli.core.models.portable import portable_references

#: What Sentence Transformers' usage snippet loads when the card has no Hub model id.
MODEL_ID_PLACEHOLDER = "sentence_transformers_model_id"


def name_training_data(model, train: str) -> None:
    """Name the training data in the card; call before the trainer is built.

    The trainer keeps a name given here and adds the dataset's size, columns and examples;
    otherwise it names a jsonl file "json" after the loader that read it. (The evaluation data is
    not listed the same way: the card's template needs statistics the trainer computes only for
    an ``eval_dataset``, and mmst scores with an evaluator instead.)

    Args:
        model: The model to be trained.
        train: The training data as the user gave it (a path or Hub id).
    """
    model.model_card_data.train_datasets = [{"name": train}]


def record_scores(model, evaluator, metrics: dict[str, float], *, epoch: float = 0, step: int = 0) -> None:
    """Put scores an evaluator computed into the card, as if the trainer had run the evaluator then.

    The latest call fills the card's metrics table; every call adds the main metric to its
    training-log table at ``step``, so a call at step 0 and one after training show before and after.

    Args:
        model: The model the card belongs to.
        evaluator: The Sentence Transformers evaluator that produced ``metrics`` (its ``name`` prefixes them).
        metrics: Metric name -> value, without the evaluator's prefix.
        epoch: The epoch reached. Default 0.
        step: The training step reached. Default 0 (before training).
    """
    prefixed = evaluator.prefix_name_to_metrics(metrics, evaluator.name)
    evaluator.store_metrics_in_model_card_data(model, prefixed, epoch, step)


def show_loading(model, location: str | os.PathLike) -> None:
    """Make the card's usage snippet load the model from ``location`` (with ``trust_remote_code=True`` when needed).

    Args:
        model: The model the card belongs to; its card keeps a Hub ``model_id`` if one was set.
        location: The folder the model is saved to, as the user will type it.
    """
    card = model.model_card_data
    arguments = json.dumps(os.fspath(location)) + (", trust_remote_code=True" if portable_references(model) else "")
    generate = type(card).generate_usage_snippet

    def generate_usage_snippet() -> str:
        return generate(card).replace(f'("{card.model_id or MODEL_ID_PLACEHOLDER}")', f"({arguments})")

    # The card class offers no field for loader arguments; its snippet method is replaced on this card only.
    card.generate_usage_snippet = generate_usage_snippet

