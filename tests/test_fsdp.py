"""FSDP training (``--fsdp``) on CPU processes (gloo), and the ``--dry-run --gpus`` planner's arithmetic."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mmst_cli.core.train.gpu_plan import ModelFigures, per_gpu_components, smallest_fitting_setup
from tests.data_factory import COLOUR_NAMES, write_text_pairs
from tests.helpers import assert_one_line_error, run_json, run_mmst, run_torchrun

GIB = 2**30


def _weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _assert_equal_weights(saved: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert saved.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=1e-6, msg=name)


def _assert_sharded(summary: dict, wrapped: list[str], processes: int = 2) -> None:
    """The run really sharded: its processes, the model's own layer classes wrapped, every
    parameter held as a shard (accelerate falling back to DDP would leave plain tensors)."""
    sharding = summary["train"]["fsdp"]
    assert sharding["processes"] == processes and sharding["layers_wrapped"] == wrapped
    assert sharding["sharded_parameters"] == sharding["parameters"] > 0


def test_fsdp_with_gradcache_trains_saves_full_weights_and_resumes(tmp_path, tiny_models):
    data = write_text_pairs(tmp_path / "data", count=8)
    run = tmp_path / "run"
    command = ["train-embed", "--model", str(tiny_models["bert"]), "--data", str(data), "--loss", "cached-mnrl",
               "--mini-batch-size", "1", "--batch-size", "2", "--max-steps", "2", "--save-steps", "1", "--lr", "1e-3",
               "--fsdp", "full_shard", "--output-dir", str(run), "--json"]  # fmt: skip
    result = run_torchrun(*command)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    _assert_sharded(summary, ["BertEmbeddings", "BertLayer"])
    assert summary["train"]["steps"] == 2 and summary["loss"] == "cached-mnrl"

    # The saved model holds the full weights: those accelerate gathered into the checkpoint of the
    # same step (a save that does not pass through mmst), and not the start's.
    trained = _weights(run / "model")
    gathered = torch.load(run / "checkpoints" / "checkpoint-2" / "pytorch_model_fsdp.bin", weights_only=True)
    _assert_equal_weights(trained, {name.removeprefix("0.model."): tensor for name, tensor in gathered.items()})
    _assert_equal_weights(_weights(run / "checkpoints" / "checkpoint-2"), trained)
    start = _weights(tiny_models["bert"])
    assert max((trained[name] - start[name]).abs().max().item() for name in start) > 1e-4
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(run / "model")).encode(["a red thing"]).shape == (1, 32)

    # A crash after step 1: resuming from checkpoint-1 ends where the uninterrupted run did.
    shutil.rmtree(run / "model")
    shutil.rmtree(run / "checkpoints" / "checkpoint-2")
    (run / "metrics.json").unlink()
    resumed = run_torchrun(*command, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_equal_weights(_weights(run / "model"), trained)

    # The run records how it was sharded: resuming with other FSDP settings is refused.
    other = run_mmst(*command[:-5], "--fsdp", "shard_grad_op", "--output-dir", str(run), "--resume",
                     env={"LOCAL_RANK": "0", "WORLD_SIZE": "2"})  # fmt: skip
    assert_one_line_error(other, 2, "--resume", "--fsdp 'full_shard' -> 'shard_grad_op'")


def test_fsdp_reranker_with_gradcache_in_a_launch_of_one(tmp_path, tiny_reranker):
    """One process, as on a single GPU: FSDP still needs (and takes) a distributed launch."""
    answers = [f"{name} things are numbered {index * 7}" for index, name in enumerate(COLOUR_NAMES[:8])]
    rows = [{"query": f"which number goes with {name}?", "positive": answers[i], "negative": answers[(i + 1) % 8]}
            for i, name in enumerate(COLOUR_NAMES[:8])]  # fmt: skip
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf8")
    result = run_torchrun("train-rerank", "--model", str(tiny_reranker), "--data", str(data), "--loss", "cmnrl",
                          "--mini-batch-size", "1", "--batch-size", "2", "--max-steps", "1", "--lr", "1e-3", "--warmup", "0",
                          "--fsdp", "full_shard", "--output-dir", str(tmp_path / "run"), "--json", processes=1)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_sharded(json.loads(result.stdout), ["BertEmbeddings", "BertLayer"], processes=1)
    from sentence_transformers import CrossEncoder

    trained, start = _weights(tmp_path / "run" / "model"), _weights(tiny_reranker)
    assert trained.keys() == start.keys()
    assert max((trained[name] - start[name]).abs().max().item() for name in start) > 1e-4
    assert CrossEncoder(str(tmp_path / "run" / "model")).predict([("a", "b")]).shape == (1,)


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--fsdp", "hybrid_shard"], ["FSDP1", "full_shard"]),
        (["--fsdp", "zero3"], ["--fsdp 'zero3' is unknown", "full_shard, shard_grad_op"]),
        (["--fsdp-config", "{config}"], ["add --fsdp full_shard"]),
        (["--fsdp", "full_shard", "--lora-r", "8"], ["--lora-r", "drop one"]),
        (["--fsdp", "full_shard", "--gradient-checkpointing"], ["activation_checkpointing"]),
        (["--fsdp", "full_shard"], ["torchrun --nproc_per_node N -m mmst_cli"]),
        (["--fsdp", "full_shard", "--fsdp-config", "{bad_json}"], ["is not valid JSON"]),
        (["--fsdp", "full_shard", "--fsdp-config", "{version_1}"], ["FSDP2 only"]),
        (["--fsdp", "full_shard", "--fsdp-config", "{config}.missing"], ["cannot read it", "name a JSON file"]),
        (["--gpus", "2"], ["--gpus plans a --dry-run"]),
        (["--dry-run", "--gpu-memory", "80"], ["give a positive number with --gpus"]),
        (["ACCELERATE_USE_FSDP=true"], ["accelerate launch turns on FSDP", "add --fsdp full_shard"]),
    ],
    ids=["hybrid", "unknown", "config-alone", "lora", "checkpointing", "no-launch", "bad-json", "fsdp1", "missing-config", "gpus-alone",
         "memory-alone", "accelerate-fsdp"],
)  # fmt: skip
def test_impossible_fsdp_and_planner_flags_fail_before_any_work(tmp_path, tiny_models, flags, fragments):
    files = {"config": '{"cpu_offload": false}', "bad_json": "{cpu_offload: yes", "version_1": '{"fsdp_version": 1}'}
    for name, text in files.items():
        (tmp_path / f"{name}.json").write_text(text, encoding="utf8")
    flags = [flag.format(**{name: str(tmp_path / f"{name}.json") for name in files}) for flag in flags]
    env = dict(flag.split("=") for flag in flags if "=" in flag)  # what an accelerate FSDP config exports
    flags = [flag for flag in flags if "=" not in flag]
    for command in ("train-embed", "train-rerank"):
        result = run_mmst(command, "--model", str(tiny_models["bert"]), "--data", str(tmp_path / "missing.jsonl"), *flags,
                          "--output-dir", str(tmp_path / "run"), env=env)  # fmt: skip
        assert_one_line_error(result, 2, *fragments)
    assert not (tmp_path / "run").exists()


def test_fsdp_arguments_wrap_each_towers_own_layers_and_take_the_config_file(tmp_path, tiny_models):
    from sentence_transformers import SentenceTransformer

    from mmst_cli.core.errors import MmstError
    from mmst_cli.core.train.embed import TrainEmbedOptions
    from mmst_cli.core.train.fsdp import check_fsdp_model, fsdp_training_arguments, layer_classes_to_wrap

    config = tmp_path / "fsdp.json"
    config.write_text('{"fsdp_cpu_offload": true, "reshard_after_forward": false}', encoding="utf8")
    options = TrainEmbedOptions(fsdp="full_shard", fsdp_config=str(config))
    arguments = fsdp_training_arguments(options, SentenceTransformer(str(tiny_models["bert"])))
    assert arguments["fsdp"] is True
    settings = arguments["fsdp_config"]
    assert settings["transformer_layer_cls_to_wrap"] == ["BertEmbeddings", "BertLayer"]  # BertModel's own list
    assert settings["cpu_offload"] is True and settings["reshard_after_forward"] is False  # the file wins
    assert settings["version"] == 2 and settings["state_dict_type"] == "FULL_STATE_DICT"

    clip = SentenceTransformer(str(tiny_models["clip"]))
    # CLIP names its encoder layers (both towers) and embeddings as blocks to keep whole...
    assert layer_classes_to_wrap(clip) == ["CLIPEncoderLayer", "CLIPTextEmbeddings", "CLIPVisionEmbeddings"]
    # ... but its scalar logit scale is a parameter FSDP2 cannot shard: refused before training, with the fix.
    with pytest.raises(MmstError, match=r"scalar parameters \(0\.model\.logit_scale\).*drop --fsdp"):
        check_fsdp_model(options, clip)
    check_fsdp_model(TrainEmbedOptions(), clip)
    assert fsdp_training_arguments(TrainEmbedOptions(), clip) == {}


def test_gpu_arithmetic_shards_states_but_not_activations():
    figures = ModelFigures(weight_bytes=8 * GIB, trainable=2 * GIB, largest_unit_bytes=GIB // 4,
                           activation_bytes=GIB // 8, forward_bytes=GIB // 16, in_flight=8, gradcache_bytes=GIB // 32)  # fmt: skip
    ddp, fsdp = (per_gpu_components(figures, strategy, 4) for strategy in ("ddp", "fsdp"))
    assert (ddp["weights"], ddp["gradients"], ddp["optimizer"]) == (8 * GIB, 8 * GIB, 16 * GIB)
    assert (fsdp["weights"], fsdp["gradients"], fsdp["optimizer"]) == (2 * GIB, 2 * GIB, 4 * GIB)
    for part in ("activations", "forward_buffers", "gradcache_buffers", "cuda_context"):
        assert ddp[part] == fsdp[part], part
    assert ddp["activations"] == GIB and ddp["forward_buffers"] == GIB // 2
    assert ddp["gradient_buckets"] == 8 * GIB and "gradient_buckets" not in per_gpu_components(figures, "ddp", 1)
    assert fsdp["gathered_layers"] == GIB // 2 and "gathered_layers" not in ddp

    # 8 GiB of weights, 32 GiB of gradients and AdamW state, 1.5 GiB of activations: 80 GiB GPUs
    # take it whole on one; 24 GiB ones need FSDP over 2 (20 GiB of shards each), 14 GiB ones over 4.
    def setup(gpus, strategy, mini_batch_size=None, lora=False):
        return {"gpus": gpus, "strategy": strategy, "mini_batch_size": mini_batch_size, "lora": lora}

    assert smallest_fitting_setup(figures, 80 * GIB) == setup(1, "ddp")
    assert smallest_fitting_setup(figures, 24 * GIB) == setup(2, "fsdp")
    assert smallest_fitting_setup(figures, 14 * GIB) == setup(4, "fsdp")
    # Two 18 GiB GPUs hold the shards and buffers (17.1 GiB) and 4 samples in flight (0.19 GiB each).
    assert smallest_fitting_setup(figures, 18 * GIB, max_gpus=2) == setup(2, "fsdp", mini_batch_size=4)
    # LoRA changes what is learnt: only when no number of GPUs allowed fits without it.
    assert smallest_fitting_setup(figures, 12 * GIB, max_gpus=2) == setup(1, "ddp", lora=True)
    assert smallest_fitting_setup(figures, GIB // 2) is None  # below a CUDA context


def test_dry_run_plans_per_gpu_under_ddp_and_fsdp(tmp_path, tiny_models):
    data = write_text_pairs(tmp_path / "data", count=8)
    common = ["--model", str(tiny_models["bert"]), "--data", str(data), "--dry-run", "--gpus", "4"]
    plan = run_json("train-embed", *common, "--gpu-memory", "80")["dry_run"]
    gpus = plan["gpus"]
    ddp, fsdp = (gpus["per_gpu"][strategy]["components_bytes"] for strategy in ("ddp", "fsdp"))
    assert ddp["optimizer"] == plan["components_bytes"]["optimizer"] and fsdp["optimizer"] == ddp["optimizer"] // 4
    assert fsdp["activations"] == ddp["activations"] == plan["components_bytes"]["activations"]
    assert gpus["strategy"] == "ddp" and gpus["fits"] is True and plan["fits"] is True
    assert gpus["smallest_fit"]["gpus"] == 1
    # GPUs smaller than a CUDA context: exit 1, and the advice says nothing fits.
    small = run_mmst("train-rerank", *common, "--loss", "cmnrl", "--gpu-memory", "0.25", "--fsdp", "full_shard", "--json")
    assert small.returncode == 1, small.stderr
    refused = json.loads(small.stdout)["dry_run"]
    assert refused["gpus"]["strategy"] == "fsdp" and refused["fits"] is False
    assert refused["suggestions"] == ["nothing up to 64 GPUs of 0.25 GiB fits; lower --batch-size or --max-pixels, or use --bf16"]
    # Without a GPU here and no --gpu-memory, the parts are shown without a verdict.
    unknown = run_mmst("train-embed", *common)
    assert unknown.returncode == 0 and "add --gpu-memory GIB" in unknown.stderr
