"""Sharded ``mmst encode`` under torchrun: one shard per rank, merged by rank 0 or by ``--merge``.

One test runs a real two-process ``torch.distributed.run`` launch on the CPU (gloo); the others run
single ranks in process, with ``RANK`` / ``WORLD_SIZE`` set as a user rerunning one rank would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmst_cli.core.encode.job import EncodeOptions, run_encode
from mmst_cli.core.encode.parts import parts_folder
from mmst_cli.core.encode.shards import detect_launch, manifest_path, rank_folder, shard_bounds
from mmst_cli.core.errors import MmstError
from tests.data_factory import write_colour_pairs
from tests.helpers import assert_one_line_error, grouped_options, run_mmst

TEXTS = [f"a photo of thing number {index}, {'very ' * (index % 3)}colourful" for index in range(9)]


@pytest.fixture(scope="module")
def clip(tiny_models):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_models["clip"]))


def encode(clip, tiny_models, inputs, output, *, notes=None, **options):
    """Run the job in this process with the loaded tiny CLIP; return its result."""
    on_chunk = options.pop("on_chunk", None)
    job = EncodeOptions(inputs=str(inputs), output=str(output), model=str(tiny_models["clip"]), **grouped_options(options))
    log = notes.append if notes is not None else (lambda line: None)
    return run_encode(job, model=clip, show_progress=False, on_chunk=on_chunk, log=log)


def parquet_rows(path):
    table = pq.read_table(path)
    return table["id"].to_pylist(), np.array(table["embedding"].to_pylist(), dtype=np.float32)


def test_shards_are_contiguous_blocks_and_the_launch_comes_from_the_environment():
    assert shard_bounds(9, 2) == [(0, 5), (5, 9)]
    assert shard_bounds(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]
    assert detect_launch({}) is None and detect_launch({"WORLD_SIZE": "1", "RANK": "0"}) is None
    launch = detect_launch({"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "1"})
    assert (launch.rank, launch.world_size, launch.local_rank) == (5, 8, 1)
    with pytest.raises(MmstError, match="RANK=2 is outside WORLD_SIZE=2"):
        detect_launch({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(MmstError, match="RANK=None is not a whole number"):
        detect_launch({"WORLD_SIZE": "2"})



@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WORLD_SIZE": "0", "RANK": "0"}, "WORLD_SIZE=0 is not a number of processes"),
        ({"WORLD_SIZE": "-2"}, "WORLD_SIZE=-2 is not a number of processes"),
        ({"RANK": "1"}, "RANK=1 is outside WORLD_SIZE=1"),
        ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK=-1 is outside WORLD_SIZE=2"),
        ({"RANK": "one", "WORLD_SIZE": "2"}, "RANK='one' is not a whole number"),
    ],
)
def test_impossible_rank_and_world_size_values_are_refused_before_any_work(environ, expected):
    with pytest.raises(MmstError, match=expected):
        detect_launch(environ)
    assert detect_launch({"RANK": "0"}) is None


def test_torchrun_two_cpu_ranks_write_what_one_process_writes(clip, tiny_models, tmp_path):
    pairs = write_colour_pairs(tmp_path, count=3)
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    values = TEXTS[:6] + [row["image"] for row in rows]  # rank 1 gets a text and the three images
    source = tmp_path / "mixed.jsonl"
    source.write_text("".join(json.dumps({"key": f"k{i}", "input": v}) + "\n" for i, v in enumerate(values)))
    common = ["--id-column", "key", "--batch-size", "1", "--chunk-size", "2"]  # batches of 1: no padding differences
    output = tmp_path / "out" / "vectors.parquet"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "mmst_cli", "encode", str(source), "--model", str(tiny_models["clip"]), "-o", str(output),
               *common, "--json"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)  # one JSON object: only rank 0, which wrote the output, prints
    assert (summary["count"], summary["world_size"], summary["modalities"]) == (9, 2, {"image": 3, "text": 6})
    assert "rank 1/2: rows 6-9 done; rank 0 writes the output" in result.stderr

    single = tmp_path / "single.parquet"
    encode(clip, tiny_models, source, single, id_column="key", batch_size=1, chunk_size=2)
    ids, vectors = parquet_rows(output)
    expected_ids, expected = parquet_rows(single)
    assert ids == expected_ids == [f"k{i}" for i in range(9)]
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-6)
    assert pq.read_table(output).schema.metadata == pq.read_table(single).schema.metadata

    manifest = json.loads(manifest_path(output).read_text())
    assert (manifest["count"], manifest["world_size"], manifest["dim"], manifest["format"]) == (9, 2, 16, "parquet")
    assert [(shard["rank"], shard["start"], shard["stop"], shard["parts"]) for shard in manifest["shards"]] == [
        (0, 0, 5, ["rank-00000/part-000000.npy", "rank-00000/part-000001.npy", "rank-00000/part-000002.npy"]),
        (1, 5, 9, ["rank-00001/part-000000.npy", "rank-00001/part-000001.npy"]),
    ]
    assert manifest["settings"]["model"] == str(tiny_models["clip"].resolve()) and manifest["settings"]["chunk_size"] == 2
    assert sorted(path.name for path in output.parent.iterdir()) == ["vectors.parquet", "vectors.parquet.manifest.json"]


class Interrupt(Exception):
    pass


def test_a_killed_rank_resumes_alone_and_merge_writes_the_output(clip, tiny_models, tmp_path, monkeypatch):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(TEXTS) + "\n")
    output = tmp_path / "vectors.npy"
    for name in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):  # ranks run by hand: no group
        monkeypatch.delenv(name, raising=False)

    def rank(number, world_size=2, **options):
        monkeypatch.setenv("RANK", str(number))
        monkeypatch.setenv("WORLD_SIZE", str(world_size))
        notes = []
        return encode(clip, tiny_models, source, output, chunk_size=2, notes=notes, **options), notes

    def merge():
        monkeypatch.delenv("RANK")
        monkeypatch.delenv("WORLD_SIZE")
        return run_mmst("encode", "--merge", "-o", str(output), "--json")

    assert_one_line_error(run_mmst("encode", "--merge", "-o", str(output)), 2, "--merge: no shards for -o")
    first, notes = rank(0)  # rows 1-5 in 3 chunks; rank 1 has not run: no output yet
    assert first.summary is None and first.encoded_chunks == 3
    assert notes[-1].startswith("rank 0/2: rows 1-5 done; rank(s) 1 not finished yet")

    def die_after_first_chunk(index):
        raise Interrupt

    with pytest.raises(Interrupt):
        rank(1, on_chunk=die_after_first_chunk)
    assert_one_line_error(merge(), 2, "the shard of rank 1 (rows 6-9 of a 2-rank run) is unfinished",
                          "1 of 2 parts missing", "RANK=1 WORLD_SIZE=2")  # fmt: skip
    assert not output.exists()

    # A run owns its shards: another world size or setting is refused, and so is a single-process run.
    with pytest.raises(MmstError, match=r"another world size \(2, now 3\)"):
        rank(1, world_size=3)
    with pytest.raises(MmstError, match=r"another dim \(None, now 8\)"):
        rank(1, dim=8)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(MmstError, match="holds the shards of an unfinished 2-rank run"):
        encode(clip, tiny_models, source, output, chunk_size=2, resume=True)

    finished_part = rank_folder(output, 1) / "part-000000.npy"
    written = finished_part.stat().st_mtime_ns
    encoded = []
    original = clip.encode
    monkeypatch.setattr(clip, "encode", lambda inputs, **kw: encoded.extend(inputs) or original(inputs, **kw))
    again, notes = rank(1)
    assert (again.summary, again.reused_chunks, again.encoded_chunks) == (None, 1, 1)
    assert sorted(encoded) == sorted(TEXTS[7:9]) and finished_part.stat().st_mtime_ns == written
    assert "rank 1/2: resuming: 1 of 2 chunks already encoded" in notes
    assert notes[-1] == f"rank 1/2: rows 6-9 done; every rank is done: write the output with mmst encode --merge -o {output}"
    monkeypatch.setattr(clip, "encode", original)

    merged = merge()
    assert merged.returncode == 0, merged.stderr
    summary = json.loads(merged.stdout)
    assert (summary["count"], summary["world_size"], summary["dim"]) == (9, 2, 16)
    np.testing.assert_allclose(np.load(output), clip.encode(TEXTS), atol=1e-6)
    assert not parts_folder(output).exists() and manifest_path(output).is_file()


def test_merge_usage_errors_are_one_line(tmp_path, monkeypatch):
    output = str(tmp_path / "v.npy")
    assert_one_line_error(run_mmst("encode", "in.txt", "--merge", "-o", output), 2, "reads no INPUTS")
    assert_one_line_error(run_mmst("encode", "--merge", "-o", output, env={"RANK": "0", "WORLD_SIZE": "2"}), 2,
                          "--merge runs in one process")  # fmt: skip
    assert_one_line_error(run_mmst("encode", "in.txt", "-o", "-", env={"RANK": "0", "WORLD_SIZE": "2"}), 2,
                          "-o -: under torchrun")  # fmt: skip
    assert_one_line_error(run_mmst("encode", "-", "-o", output, env={"RANK": "1", "WORLD_SIZE": "2"}), 2,
                          "INPUTS -: under torchrun")  # fmt: skip


def test_merge_refuses_a_shard_made_with_other_settings(clip, tiny_models, tmp_path, monkeypatch):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(TEXTS[:4]) + "\n")
    output = tmp_path / "v.npy"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setenv("RANK", "1")  # rank 1 alone first, before rank 0 recorded the run
    assert encode(clip, tiny_models, source, output, dim=8).summary is None
    monkeypatch.setenv("RANK", "0")  # every rank is done: rank 0 merges, and finds the mismatch
    with pytest.raises(MmstError, match=r"the shard of rank 1 was computed with another dim \(8, the run's is None\)"):
        encode(clip, tiny_models, source, output)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert_one_line_error(run_mmst("encode", "--merge", "-o", str(output)), 2,
                          "the shard of rank 1 was computed with another dim (8, the run's is None)")  # fmt: skip
    assert not output.exists()
