"""``mmst index`` under torchrun: each rank embeds its shard of every corpus, rank 0 builds the index.

One test runs a real two-process launch on the CPU (gloo); the other runs single ranks in process,
with ``RANK`` / ``WORLD_SIZE`` set as a user rerunning a killed rank would, and finishes the build
with ``mmst index --resume`` in one process.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmst_cli.core.errors import MmstError
from mmst_cli.core.encode.settings import CorpusReading, EmbeddingSettings
from mmst_cli.core.index.build import IndexOptions, run_index, staging_folder
from tests.helpers import assert_one_line_error, run_json, run_mmst, run_torchrun

WORDS = ["red apple pie", "stock market news", "football match", "python code", "sleepy cat", "rainy weather",
         "mountain hike", "jazz concert", "space rocket", "garden flowers"]  # fmt: skip


def write_corpus(path, words):
    path.write_text("".join(json.dumps({"doc_id": f"{path.stem}-{i}", "text": text}) + "\n" for i, text in enumerate(words)))
    return path


def index_rows(index):
    """The index's ids in order, its vectors and the world size its manifest records."""
    ids = [json.loads(line)["id"] for line in (index / "documents.jsonl").read_text().splitlines()]
    return ids, np.load(index / "vectors.npy"), json.loads((index / "manifest.json").read_text())["world_size"]


def test_torchrun_two_cpu_ranks_build_the_index_one_process_builds(tiny_models, tmp_path):
    # Two corpora: each has its own barrier and merge under one process group.
    corpora = [str(write_corpus(tmp_path / "first.jsonl", WORDS[:5])), str(write_corpus(tmp_path / "second.jsonl", WORDS[5:]))]
    common = ["--model", str(tiny_models["bert"]), *corpora, "--id-column", "doc_id", "--batch-size", "1", "--chunk-size", "2"]
    sharded = tmp_path / "sharded.index"
    result = run_torchrun("index", *common, "-o", str(sharded), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)  # one JSON object: only rank 0, which built the index, prints
    assert (summary["documents"], summary["world_size"]) == (10, 2)
    assert "rank 1/2: its shards of 2 corpus(es) are done; rank 0 builds the index" in result.stderr
    assert not staging_folder(sharded).exists()

    single = tmp_path / "single.index"
    assert run_json("index", *common, "-o", str(single))["world_size"] == 1
    ids, vectors, world_size = index_rows(sharded)
    expected_ids, expected, _ = index_rows(single)
    assert ids == expected_ids == [f"first-{i}" for i in range(5)] + [f"second-{i}" for i in range(5)]
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-6)
    assert world_size == 2
    hits = [run_json("search", str(index), "a cat asleep", "-k", "3")["results"] for index in (sharded, single)]
    assert [hit["id"] for hit in hits[0]] == [hit["id"] for hit in hits[1]]


class Interrupt(Exception):
    pass


def test_a_killed_rank_reruns_alone_and_resume_builds_the_index(tiny_models, tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_models["bert"]))
    corpus = write_corpus(tmp_path / "docs.jsonl", WORDS[:9])
    index = tmp_path / "docs.index"
    for name in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):  # ranks run by hand: no group
        monkeypatch.delenv(name, raising=False)

    def build(rank=None, on_chunk=None, prompt=None, **options):
        """Run the build in process as rank ``rank`` of 2 run by hand, or as one process (``None``)."""
        if rank is None:
            monkeypatch.delenv("RANK", raising=False)
            monkeypatch.delenv("WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", "2")
        notes = []
        job = IndexOptions(corpora=[str(corpus)], output=str(index), model=str(tiny_models["bert"]),
                           reading=CorpusReading(id_column="doc_id"), embedding=EmbeddingSettings(prompt=prompt, chunk_size=2),
                           **options)  # fmt: skip
        return run_index(job, model=model, show_progress=False, on_chunk=on_chunk, log=notes.append), notes

    def kill(chunk):
        raise Interrupt

    # Rank 1 (rows 6-9, 2 chunks) is killed after its first chunk; rank 0 (rows 1-5) finishes.
    with pytest.raises(Interrupt):
        build(rank=1, on_chunk=kill)
    with pytest.raises(MmstError, match=r"rank 0 of the 2-rank run .* has not run yet .*RANK=0 WORLD_SIZE=2 with the same mmst index"):
        build(resume=True)
    summary, notes = build(rank=0)
    assert summary is None and not index.exists()
    assert any("rank(s) 1 not finished yet: run them, then mmst index --resume" in note for note in notes), notes

    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")  # one process: the shards are merged, once they are finished
    assert_one_line_error(
        run_mmst("index", "--model", str(tiny_models["bert"]), str(corpus), "--id-column", "doc_id", "--chunk-size", "2",
                 "--resume", "-o", str(index)),
        2, "the shard of rank 1 (rows 6-9 of a 2-rank run) is unfinished, 1 of 2 parts missing",
        "--resume: the shard", "RANK=1 WORLD_SIZE=2 with the same mmst index command), then --resume",
    )  # fmt: skip

    summary, notes = build(rank=1)  # the killed rank alone: only its missing chunk is encoded
    assert summary is None and any("resuming: 1 of 2 chunks already encoded" in note for note in notes), notes
    assert any("every rank is done: write the output with mmst index --resume" in note for note in notes), notes

    with pytest.raises(MmstError, match="were embedded from other documents or with other options"):
        build(resume=True, prompt="passage: ")  # would put vectors made without the prompt in its index
    summary, notes = build(resume=True)
    assert (summary["documents"], summary["world_size"], summary["encoded_chunks"]) == (9, 2, 0)
    ids, vectors, world_size = index_rows(index)
    assert ids == [f"docs-{i}" for i in range(9)] and world_size == 2 and not staging_folder(index).exists()
    np.testing.assert_allclose(vectors, model.encode_document(WORDS[:9], normalize_embeddings=True), atol=1e-5)

    # --add by ranks run alone: rank 1 first, then rank 0, which finds every shard done and writes the index.
    corpus = write_corpus(tmp_path / "more.jsonl", WORDS[7:])
    assert build(rank=1, add=True)[0] is None
    summary, notes = build(rank=0, add=True)
    assert (summary["documents"], summary["added"], summary["world_size"]) == (12, 3, 2), notes
    ids, grown, _ = index_rows(index)
    assert ids[9:] == ["more-0", "more-1", "more-2"] and np.array_equal(grown[:9], vectors)
