"""``--dataloader-workers``: media decode and preprocessing run in DataLoader worker processes,
training stays exactly what it is without them, and the collator a spawned worker receives
carries no weights."""

from __future__ import annotations

import io
import json
import os
import pickle
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import pytest
import torch

from mmst_cli.core.train import embed
from mmst_cli.core.train.dataloader_workers import default_dataloader_workers
from mmst_cli.core.train.embed import TrainEmbedOptions, train_embedding_model
from mmst_cli.core.train.losses import LossOptions
from tests.data_factory import write_colour_pairs
from tests.helpers import assert_one_line_error, run_mmst


@pytest.fixture(scope="module")
def colour_pairs(tmp_path_factory) -> Path:
    return write_colour_pairs(tmp_path_factory.mktemp("colours"), count=8, negatives=True)


def _record_image_decodes(monkeypatch, log: Path) -> None:
    """Wrap transformers' image-file decoder (what CLIP's processor reads paths with) so that each
    call appends the worker id, or ``main``, to ``log``. Forked workers inherit the wrapper."""
    import transformers.image_processing_backends as backends

    decode = backends.load_image_as_tensor

    def recording(*args, **kwargs):
        worker = torch.utils.data.get_worker_info()
        with log.open("a") as lines:
            lines.write(f"{'main' if worker is None else worker.id} {os.getpid()}\n")
        return decode(*args, **kwargs)

    monkeypatch.setattr(backends, "load_image_as_tensor", recording)


def _train(tmp_path: Path, data: Path, clip: Path, workers: int):
    options = TrainEmbedOptions(
        model=str(clip), data=str(data), loss=LossOptions(name="mnrl"), max_steps=2, batch_size=4, lr=3e-4,
        warmup=0.0, output_dir=str(tmp_path / f"workers-{workers}"), dataloader_workers=workers,
    )  # fmt: skip
    return train_embedding_model(options, log=lambda line: None)


def _pickled_collator(trainer) -> bytes:
    """The trainer's collator as a spawned worker receives it (pickled as the workers start)."""
    buffer = io.BytesIO()
    ForkingPickler(buffer, pickle.HIGHEST_PROTOCOL).dump(trainer.data_collator)
    return buffer.getvalue()


def test_workers_decode_the_images_and_training_is_unchanged(tmp_path, monkeypatch, colour_pairs, tiny_models):
    collators = []
    prepare = embed.preprocess_in_workers

    def spy(trainer, audio):
        prepare(trainer, audio)
        collators.append((trainer.data_collator, _pickled_collator(trainer)))

    monkeypatch.setattr(embed, "preprocess_in_workers", spy)
    runs = {}
    for workers in (0, 2):
        log = tmp_path / f"decodes-{workers}.txt"
        _record_image_decodes(monkeypatch, log)
        runs[workers] = _train(tmp_path, colour_pairs, tiny_models["clip"], workers)
        decodes = [line.split() for line in log.read_text().splitlines()]
        in_workers = [(worker, pid) for worker, pid in decodes if worker != "main"]
        # 2 steps of 4 rows, each with an image and a negative image: 16 decodes at the least.
        if workers == 0:
            assert not in_workers and len(decodes) >= 16
        else:
            assert len(in_workers) >= 16, decodes
            assert {worker for worker, _ in in_workers} == {"0", "1"}
            assert str(os.getpid()) not in {pid for _, pid in in_workers}

    # Same batches in the same order: the same losses and the same weights.
    assert runs[2].summary["train"]["loss_curve"] == runs[0].summary["train"]["loss_curve"]
    trained = {name: tensor for name, tensor in runs[2].model.state_dict().items()}
    for name, tensor in runs[0].model.state_dict().items():
        assert torch.equal(trained[name], tensor), name

    # What a spawned worker would receive: the collator, with a weightless model that preprocesses
    # exactly as the trained one does.
    collator, pickled = collators[-1]
    received = pickle.loads(pickled)
    tensors = [*received.preprocess_fn.model.parameters(), *received.preprocess_fn.model.buffers()]
    assert tensors and all(tensor.is_meta for tensor in tensors)
    rows = [json.loads(line) for line in colour_pairs.read_text().splitlines()][:3]
    for row in rows:
        for column in ("image", "negative"):
            row[column] = str(colour_pairs.parent / row[column])
    expected, got = collator(rows), received(rows)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value) if isinstance(value, torch.Tensor) else got[key] == value, key


def test_a_model_with_weight_norm_and_hooks_is_sent_weightless_and_left_intact(tiny_models):
    """wav2vec2's positional convolution is parametrized (weight norm, which refuses pickling) and
    carries a hook that is a local function: the copy drops both, the trained model keeps both."""
    import numpy as np

    from mmst_cli.core.models.loading import load_model
    from mmst_cli.core.models.locate import locate_model
    from mmst_cli.core.train.dataloader_workers import WorkerPreprocess

    model = load_model(locate_model(str(tiny_models["wav2vec2"])), device="cpu")
    clips = [{"array": np.sin(np.arange(4000, dtype=np.float32) / 7), "sampling_rate": 16000}]
    before = model.encode(clips, convert_to_tensor=True)
    for _ in range(2):  # once per worker
        buffer = io.BytesIO()
        ForkingPickler(buffer, pickle.HIGHEST_PROTOCOL).dump(WorkerPreprocess(model))
        received = pickle.loads(buffer.getvalue())
    assert all(tensor.is_meta for tensor in received.model.parameters())
    expected, got = model.preprocess(clips), received(clips)
    assert all(torch.equal(got[key], value) for key, value in expected.items() if isinstance(value, torch.Tensor))
    assert torch.equal(model.encode(clips, convert_to_tensor=True), before)


def test_bad_image_fails_before_training_with_the_same_error(tmp_path, tiny_models):
    data = write_colour_pairs(tmp_path / "data", count=4)
    (tmp_path / "data" / "images" / "001.png").write_bytes(b"not a png")
    errors = []
    for workers in ("0", "2"):
        result = run_mmst("train-embed", "--model", str(tiny_models["clip"]), "--data", str(data),
                          "--dataloader-workers", workers, "--output-dir", str(tmp_path / "run"))  # fmt: skip
        assert_one_line_error(result, 2, "row 2", "'image'", "images/001.png", "--skip-bad")
        assert not (tmp_path / "run").exists()
        errors.append([line for line in result.stderr.splitlines() if line.startswith("Error: ")])
    assert errors[0] == errors[1]


def test_default_suits_the_machine():
    assert [default_dataloader_workers(cores) for cores in (1, 2, 3, 4, 16)] == [0, 0, 2, 3, 4]
