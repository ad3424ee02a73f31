"""A training run owns its output folder: the lock, the resume record and the clean-up on failure."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from tests.data_factory import write_text_pairs
from tests.helpers import assert_one_line_error, run_json, run_mmst


@pytest.fixture
def pairs(tmp_path):
    return write_text_pairs(tmp_path / "data", count=8)


def _train(tiny_models, data, out, *extra):
    return run_mmst("train-embed", "--model", str(tiny_models["bert"]), "--data", str(data), "--batch-size", "4",
                    "--loss", "mnrl", "--output-dir", str(out), *extra)  # fmt: skip


def test_a_folder_held_by_a_live_run_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path, tiny_models, pairs):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(["sleep", "60"])
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname(), "command": "train-embed", "started": "2026-12-03T10:00:00"}
        (out / ".mmst-run.lock").write_text(json.dumps(lock))
        refused = _train(tiny_models, pairs, out, "--max-steps", "1")
        assert_one_line_error(refused, 2, "is in use by mmst train-embed", f"pid {holder.pid}", "choose another --output-dir")
        assert not (out / "model").exists()
    finally:
        holder.kill()
        holder.wait()
    summary = json.loads(_train(tiny_models, pairs, out, "--max-steps", "1", "--json").stdout)
    assert summary["train"]["steps"] == 1
    assert not (out / ".mmst-run.lock").exists()  # released at the end
    assert not [path.name for path in out.iterdir() if path.name.endswith(".tmp")]


def test_resume_refuses_other_options_or_data_unless_forced(tmp_path, tiny_models, pairs):
    out = tmp_path / "run"
    first = _train(tiny_models, pairs, out, "--max-steps", "2", "--save-steps", "1")
    assert first.returncode == 0, first.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["command"] == "train-embed" and record["options"]["lr"] == 2e-5
    mismatched = _train(tiny_models, pairs, out, "--max-steps", "3", "--save-steps", "1", "--resume", "--lr", "1e-4")
    assert_one_line_error(mismatched, 2, "--resume", "--lr 2e-05 -> 0.0001", "--force")
    time.sleep(0.01)
    pairs.write_text(pairs.read_text() + json.dumps({"query": "one more", "answer": "row"}) + "\n")
    changed = _train(tiny_models, pairs, out, "--max-steps", "3", "--save-steps", "1", "--resume")
    assert_one_line_error(changed, 2, "the files of --data changed")
    forced = run_json("train-embed", "--model", str(tiny_models["bert"]), "--data", str(pairs), "--batch-size", "4",
                      "--loss", "mnrl", "--output-dir", str(out), "--max-steps", "3", "--resume", "--force")  # fmt: skip
    assert forced["train"]["steps"] == 3  # a longer run is a continuation, not a mismatch


def test_unfinished_checkpoints_need_resume_and_force_needs_resume(tmp_path, tiny_models, pairs):
    out = tmp_path / "run"
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    assert_one_line_error(_train(tiny_models, pairs, out, "--max-steps", "1"), 2, "unfinished run", "--resume")
    assert_one_line_error(_train(tiny_models, pairs, tmp_path / "x", "--force"), 2, "--force only applies to --resume")


def test_a_run_that_fails_before_saving_leaves_no_folder_and_null_cells_are_named(tmp_path, tiny_models):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a", "answer": null}\n{"query": "b", "answer": "c"}\n')
    result = _train(tiny_models, bad, tmp_path / "run", "--max-steps", "1", "--columns", "query,answer")
    assert_one_line_error(result, 2, "row 1, column 'answer': null: empty cell", "--skip-bad")
    rerank = run_mmst("train-rerank", "--model", str(tiny_models["bert"]), "--data", str(bad), "--max-steps", "1",
                      "--output-dir", str(tmp_path / "rerank"))  # fmt: skip
    assert_one_line_error(rerank, 2, "row 1, column 'answer': null: empty cell")
    assert not (tmp_path / "rerank").exists()
    assert not (tmp_path / "run").exists()
    assert not os.path.exists(tmp_path / "run" / ".mmst-run.lock")


def test_resume_skips_a_checkpoint_cut_short_and_names_it_when_none_is_intact(tmp_path, tiny_models, pairs):
    import shutil

    out = tmp_path / "run"
    assert _train(tiny_models, pairs, out, "--max-steps", "2", "--save-steps", "1").returncode == 0
    shutil.rmtree(out / "model")  # as if the run had died after its second checkpoint
    checkpoints = out / "checkpoints"
    newest = checkpoints / "checkpoint-2" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:-100])  # a crash or a full disk cut the save short
    resumed = _train(tiny_models, pairs, out, "--max-steps", "3", "--save-steps", "1", "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    logged = " ".join(resumed.stderr.split())  # the console wraps long lines
    assert "warning: checkpoint-2 is not intact (model.safetensors is truncated); resuming from checkpoint-1" in logged
    assert json.loads(resumed.stdout)["train"]["steps"] == 3

    shutil.rmtree(out / "model")
    for checkpoint in checkpoints.glob("checkpoint-*"):
        (checkpoint / "optimizer.pt").write_bytes(b"PK\x03\x04 cut short")
    refused = _train(tiny_models, pairs, out, "--max-steps", "4", "--resume")
    assert_one_line_error(refused, 2, "no intact checkpoint", "checkpoint-3 is not intact (optimizer.pt is unreadable", "delete the broken ones")
