"""Data loading: formats, column selection, media checks and resampling, in-process (fast)."""

from __future__ import annotations

import io
import json

import datasets
import numpy as np
import pytest
import soundfile
from PIL import Image

from mmst_cli.core.data.tables import load_pair_data, prepare_media
from mmst_cli.core.errors import MmstError
from mmst_cli.core.retrieval.tasks import pairs_to_retrieval_task
from tests.data_factory import write_colour_pairs


def _png(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _wav(samples: int, rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.linspace(-1, 1, samples, dtype="float32"), rate, format="WAV")
    return buffer.getvalue()


def test_every_file_format_and_a_saved_dataset_give_the_same_rows(tmp_path):
    rows = [{"id": str(i), "query": f"q{i}", "doc": f"d{i}"} for i in range(3)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "a.csv").write_text("id,query,doc\n" + "".join(f"{r['id']},{r['query']},{r['doc']}\n" for r in rows))
    table = datasets.Dataset.from_list(rows)
    table.to_parquet(str(tmp_path / "a.parquet"))
    table.save_to_disk(str(tmp_path / "saved"))
    for reference in ("a.jsonl", "a.csv", "a.parquet", "saved"):
        data = load_pair_data(str(tmp_path / reference))
        # The id column is not content: the default columns are the texts, in order.
        assert data.dataset.column_names == ["query", "doc"], reference
        assert data.dataset[2] == {"query": "q2", "doc": "d2"}


def test_missing_column_lists_the_existing_ones(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"query": "q", "doc": "d"}\n')
    with pytest.raises(MmstError, match=r"no column 'passage'.*\['query', 'doc'\]"):
        load_pair_data(str(path), columns=["query", "passage"])


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(MmstError, match="unknown format '.txt'"):
        load_pair_data(str(tmp_path / "a.txt"))
    with pytest.raises(MmstError, match="does not exist"):
        load_pair_data(str(tmp_path / "missing" / "a.jsonl"))


@pytest.mark.parametrize(
    "args", [["train-embed", "--data", "{pairs}", "--eval-data", "{folder}"], ["train-rerank", "--data", "{folder}"]]
)
def test_a_retrieval_folder_given_as_training_rows_says_which_commands_read_it(tmp_path, args):
    from tests.helpers import assert_one_line_error, run_mmst

    folder = tmp_path / "beir"  # any part of a retrieval folder makes one
    folder.mkdir()
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "text": "a cat"}\n')
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"query": "cat", "answer": "a cat"}\n')
    filled = [arg.format(pairs=pairs, folder=folder) for arg in args]
    result = run_mmst(*filled, "--output-dir", str(tmp_path / "run"))  # refused before any model loads
    assert_one_line_error(result, 2, f"data '{folder}' is a retrieval folder", f"mmst mine --data {folder} -o pairs.jsonl")
    assert not (tmp_path / "run").exists()


def test_relative_paths_resolve_against_the_data_file_or_media_root(tmp_path):
    path = write_colour_pairs(tmp_path / "set", count=3)
    data = load_pair_data(str(path))
    assert data.column_modalities == {"caption": "text", "image": "image"}
    assert data.dataset[0]["image"] == str((tmp_path / "set" / "images" / "000.png").resolve())
    moved = tmp_path / "elsewhere.jsonl"
    moved.write_text(path.read_text())
    with pytest.raises(MmstError, match="3 of 3 rows"):
        load_pair_data(str(moved))
    assert load_pair_data(str(moved), media_root=tmp_path / "set").dataset.num_rows == 3


def test_a_text_cell_in_an_image_column_is_not_trained_as_text(tmp_path):
    path = write_colour_pairs(tmp_path, count=3)
    lines = path.read_text().splitlines()
    lines[1] = json.dumps({"caption": "x", "image": "just some words"})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MmstError, match="row 2, column 'image'.*not an image file name"):
        load_pair_data(str(path))


def test_bytes_columns_become_images_and_resampled_audio():
    table = datasets.Dataset.from_dict(
        {"caption": ["a", "b"], "image": [_png("red"), _png("blue")], "audio": [_wav(800, 8000)] * 2}
    )
    data = prepare_media(table, "memory", audio_sampling_rate=16000)
    assert data.column_modalities == {"caption": "text", "image": "image", "audio": "audio"}
    assert data.dataset[0]["image"].size == (8, 8)
    audio = data.dataset[0]["audio"]
    assert audio["sampling_rate"] == 16000 and len(audio["array"]) == 1600


def test_broken_image_bytes_are_reported():
    table = datasets.Dataset.from_dict({"caption": ["a", "b"], "image": [_png("red"), _png("red")[:30]]})
    with pytest.raises(MmstError, match="1 of 2 rows.*row 2, column 'image'.*does not decode"):
        prepare_media(table, "memory")


def test_retrieval_task_merges_duplicate_queries_and_documents():
    table = datasets.Dataset.from_dict(
        {"q": ["cat", "cat", "dog"], "pos": ["a cat", "kitten", "a dog"], "neg": ["a dog", "a dog", "a cat"]}
    )
    task = pairs_to_retrieval_task(prepare_media(table, "memory"))
    assert len(task.queries) == 2 and len(task.corpus) == 3  # "a dog" is one document
    cat = next(qid for qid, text in task.queries.items() if text == "cat")
    assert {task.corpus[doc] for doc in task.qrels[cat]} == {"a cat", "kitten"}


@pytest.fixture
def media_server(tmp_path, monkeypatch):
    """A loopback HTTP server over a folder with two images and a text file named like an image."""
    import functools
    import http.server
    import threading

    root = tmp_path / "served"
    root.mkdir()
    (root / "red.png").write_bytes(_png("red"))
    (root / "blue.png").write_bytes(_png("blue"))
    (root / "fake.png").write_text("not an image")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("MMST_CACHE", str(tmp_path / "cache"))
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_remote_media_is_refused_unless_allowed_then_fetched_and_checked(tmp_path, media_server):
    path = tmp_path / "remote.jsonl"
    path.write_text(
        json.dumps({"caption": "red", "image": f"{media_server}/red.png"}) + "\n"
        + json.dumps({"caption": "blue", "image": f"{media_server}/blue.png"}) + "\n"
    )  # fmt: skip
    with pytest.raises(MmstError, match="refused without --allow-remote-media"):
        load_pair_data(str(path))
    data = load_pair_data(str(path), allow_remote_media=True)
    local = data.dataset[0]["image"]
    assert local.startswith(str(tmp_path / "cache")) and Image.open(local).getpixel((0, 0)) == (255, 0, 0)

    broken = tmp_path / "broken.jsonl"
    broken.write_text(
        json.dumps({"caption": "gone", "image": f"{media_server}/missing.png"}) + "\n"
        + json.dumps({"caption": "fake", "image": f"{media_server}/fake.png"}) + "\n"
    )  # fmt: skip
    with pytest.raises(MmstError, match=r"2 of 2 rows.*HTTP 404.*does not decode as an image"):
        load_pair_data(str(broken), allow_remote_media=True)
    assert not [p for p in (tmp_path / "cache" / "media").iterdir() if p.name.startswith(".")]  # no partial files


def test_frame_lists_become_videos_of_checked_rgb_frames(tmp_path):
    from tests.data_factory import write_frame_clips

    data = load_pair_data(str(write_frame_clips(tmp_path, count=3, frames=3)))
    assert data.column_modalities == {"caption": "text", "clip": "video"}
    video = data.dataset[1]["clip"]["video"]
    assert [frame.size for frame in video] == [(32, 32)] * 3 and video[0].mode == "RGB"
    # Frames stored in the dataset itself (an HF List(Image()) column) work the same way, in any mode.
    embedded = datasets.Dataset.from_dict(
        {"caption": ["grey then red"], "clip": [[{"bytes": _png("red"), "path": None}] * 2]},
        features=datasets.Features({"caption": datasets.Value("string"), "clip": datasets.List(datasets.Image())}),
    )
    data = prepare_media(embedded, "memory")
    assert data.column_modalities["clip"] == "video" and len(data.dataset[0]["clip"]["video"]) == 2
    # Equal clips are one document of the evaluation corpus, however often they are decoded.
    doubled = datasets.concatenate_datasets([data.dataset, data.dataset])
    task = pairs_to_retrieval_task(type(data)(doubled, data.column_modalities, "memory"))
    assert len(task.corpus) == 1


def test_bad_frames_name_the_row_and_the_frame(tmp_path):
    from tests.data_factory import write_frame_clips

    path = write_frame_clips(tmp_path, count=3, frames=3)
    (tmp_path / "clips" / "001" / "2.png").unlink()
    Image.new("RGB", (40, 32)).save(tmp_path / "clips" / "002" / "0.png")
    with pytest.raises(MmstError) as raised:
        load_pair_data(str(path))
    message = str(raised.value)
    assert "2 of 3 rows" in message
    assert "row 2, column 'clip': frame 3: clips/001/2.png: file not found" in message
    assert "row 3, column 'clip': 3 frames: frames differ in size (40x32 and 32x32)" in message
    assert len(load_pair_data(str(path), skip_bad=True).dataset) == 1
