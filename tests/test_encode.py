"""``mmst encode``: every input form, every output format, resume, precision, and equality with ``model.encode``.

Most tests run the job in-process on tiny models loaded once (fast); a handful run the real CLI in
a subprocess where the process boundary matters (stdout purity, exit status, one-line errors).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
import soundfile

from mmst_cli.core.encode.job import EncodeOptions, run_encode
from mmst_cli.core.encode.parts import parts_folder
from mmst_cli.core.encode.inputs import pick_column
from mmst_cli.core.errors import MmstError
from tests.data_factory import write_colour_pairs, write_frame_clips, write_tone_pairs
from tests.helpers import MMST, assert_one_line_error, grouped_options, run_json, run_mmst, run_mmst_process

TEXTS = [f"a photo of thing number {index}, {'very ' * (index % 4)}colourful" for index in range(7)]


@pytest.fixture(scope="module")
def clip(tiny_models):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_models["clip"]))


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """pairs.jsonl (caption, image) with 6 PNGs under images/."""
    return write_colour_pairs(tmp_path_factory.mktemp("colours"), count=6)


def encode(model, model_path, inputs, output, **options):
    """Run the job in-process with an already loaded model; return (result, notes)."""
    notes: list[str] = []
    stdin = options.pop("stdin", None)
    stdout = options.pop("stdout", None)
    on_chunk = options.pop("on_chunk", None)
    job = EncodeOptions(inputs=str(inputs), output=str(output), model=str(model_path), **grouped_options(options))
    result = run_encode(
        job, model=model, show_progress=False, stdin=stdin, stdout=stdout, on_chunk=on_chunk, log=notes.append
    )
    return result, notes


def read_jsonl(path_or_text):
    text = path_or_text if isinstance(path_or_text, str) else path_or_text.read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    return [row["id"] for row in rows], np.array([row["embedding"] for row in rows])


def image_paths(colours, rows):
    return [str((colours.parent / row["image"]).resolve()) for row in rows]


# ------------------------------------------------------------------------------------------ inputs


def test_every_table_and_line_form_gives_model_encode_vectors(clip, tiny_models, tmp_path):
    rows = [{"doc_id": f"d{index}", "text": text} for index, text in enumerate(TEXTS)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    table = datasets.Dataset.from_list(rows)
    table.to_csv(str(tmp_path / "t.csv"), index=False)
    table.to_parquet(str(tmp_path / "t.parquet"))
    datasets.DatasetDict({"test": table}).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "t.txt").write_text("\n".join(TEXTS[:3]) + "\n\n" + "\n".join(TEXTS[3:]) + "\n")
    expected = clip.encode(TEXTS)

    for name, extra in (("t.jsonl", {}), ("t.csv", {}), ("t.parquet", {}), ("saved", {"split": "test"}),
                        ("t.txt", {}), ("-", {"stdin": io.StringIO("\n".join(TEXTS) + "\n")})):  # fmt: skip
        output = tmp_path / f"{name.replace('.', '_').strip('-') or 'stdin'}.npy"
        result, _ = encode(clip, tiny_models["clip"], tmp_path / name if name != "-" else "-", output, **extra)
        np.testing.assert_allclose(np.load(output), expected, atol=1e-6, err_msg=name)
        assert result.summary["count"] == 7 and result.summary["modalities"] == {"text": 7}, name
        assert not parts_folder(output).exists(), name


def test_image_folder_is_recursive_sorted_and_skips_hidden_and_non_media(clip, tiny_models, colours, tmp_path):
    folder = colours.parent / "images"
    (folder / "nested").mkdir(exist_ok=True)
    (folder / "nested" / "late.png").write_bytes((folder / "000.png").read_bytes())
    (folder / ".hidden.png").write_bytes(b"not an image")
    (folder / "notes.md").write_text("not media")
    output = tmp_path / "folder.jsonl"
    encode(clip, tiny_models["clip"], folder, output)
    ids, vectors = read_jsonl(output)
    assert ids == [f"{index:03d}.png" for index in range(6)] + ["nested/late.png"]
    expected = clip.encode([str(folder / name) for name in ids])
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    (folder / "nested" / "late.png").unlink()
    (folder / "nested").rmdir()


def test_mixed_text_and_images_in_one_column_keep_input_order(clip, tiny_models, colours, tmp_path):
    rows = [json.loads(line) for line in colours.read_text().splitlines()]
    mixed = []
    for row in rows:
        mixed += [{"input": row["caption"], "label": 1, "note": "x"}, {"input": row["image"], "label": 0, "note": "y"}]
    path = colours.parent / "mixed.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in mixed))
    output = tmp_path / "mixed.parquet"
    result, notes = encode(clip, tiny_models["clip"], path, output, chunk_size=5)
    assert result.summary["modalities"] == {"image": 6, "text": 6} and result.summary["column"] == "input"
    assert notes == ["embedding column 'input' (other columns: note); pick another with --column"]
    read = datasets.Dataset.from_parquet(str(output))
    assert read["id"] == list(range(12))
    vectors = np.array(read["embedding"], dtype=np.float32)
    np.testing.assert_allclose(vectors[0::2], clip.encode([row["caption"] for row in rows]), atol=1e-6)
    np.testing.assert_allclose(vectors[1::2], clip.encode(image_paths(colours, rows)), atol=1e-6)


def test_hf_image_column_of_a_saved_dataset_goes_through_prepare_media(clip, tiny_models, colours, tmp_path):
    rows = [json.loads(line) for line in colours.read_text().splitlines()]
    paths = image_paths(colours, rows)
    table = datasets.Dataset.from_dict({"name": [f"n{i}" for i in range(6)], "image": paths})
    table.cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "images-ds"))
    output = tmp_path / "ds.jsonl"
    result, _ = encode(clip, tiny_models["clip"], tmp_path / "images-ds", output, column="image", id_column="name")
    ids, vectors = read_jsonl(output)
    assert ids == [f"n{i}" for i in range(6)] and result.summary["modalities"] == {"image": 6}
    np.testing.assert_allclose(vectors, clip.encode(paths), atol=1e-5)


def test_audio_equals_model_encode_on_the_decoded_clips(tiny_models, tmp_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_models["wav2vec2"]))
    tones = write_tone_pairs(tmp_path, count=3, rate=16000)  # the model's rate: nothing to resample
    output = tmp_path / "tones.npy"
    result, _ = encode(model, tiny_models["wav2vec2"], tones, output, column="audio")
    assert result.summary["modalities"] == {"audio": 3}
    clips = [{"array": soundfile.read(str(tmp_path / f"audio/{i:03d}.wav"), dtype="float32")[0], "sampling_rate": 16000}
             for i in range(3)]  # fmt: skip
    np.testing.assert_allclose(np.load(output), model.encode(clips), atol=1e-5)


def test_image_files_decoded_ahead_equal_model_encode_on_the_paths(clip, tiny_models, tmp_path, monkeypatch):
    from PIL import Image

    from mmst_cli.core.encode import encoding

    # Test-sized files are below the size from which decoding ahead pays; the vectors must not depend on it.
    monkeypatch.setattr(encoding, "DECODE_AHEAD_MIN_BYTES", 0)
    decoded_ahead = []
    load = encoding._load_image_file
    monkeypatch.setattr(encoding, "_load_image_file", lambda path: decoded_ahead.append(path) or load(path))

    rng = np.random.default_rng(0)
    exif = Image.Exif()
    exif[0x0112] = 6
    paths = []
    for index in range(11):  # several calls of --batch-size 4, in all the forms a folder may hold
        pixels = rng.integers(0, 256, (30 + index, 40, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        path = tmp_path / "images" / f"{index:02d}.{('jpg', 'png', 'gif')[index % 3]}"
        path.parent.mkdir(exist_ok=True)
        if index % 3 == 0:
            image.save(path, exif=exif)  # a phone photo: shown turned
        elif index % 3 == 1:
            image.convert("LA").save(path)  # grey with alpha
        else:
            image.convert("P").save(path)  # palette
        paths.append(str(path))
    expected = clip.encode(paths)
    for workers in (None, 0, 3):
        decoded_ahead.clear()
        output = tmp_path / f"ahead-{workers}.npy"
        encode(clip, tiny_models["clip"], tmp_path / "images", output, batch_size=4, decode_workers=workers)
        np.testing.assert_allclose(np.load(output), expected, atol=1e-6)
        assert sorted(decoded_ahead) == ([] if workers == 0 else sorted(paths))


def test_video_frame_lists_equal_model_encode_on_the_frames(tiny_models, tmp_path):
    from PIL import Image
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_models["qwen2-vl"]))
    clips = write_frame_clips(tmp_path, count=3, frames=2)
    output = tmp_path / "clips.npy"
    result, _ = encode(model, tiny_models["qwen2-vl"], clips, output, column="clip")
    assert result.summary["modalities"] == {"video": 3}
    videos = [{"video": [Image.open(tmp_path / f"clips/{i:03d}/{f}.png").convert("RGB") for f in range(2)]} for i in range(3)]
    np.testing.assert_allclose(np.load(output), model.encode(videos), atol=1e-5)


def test_column_choice():
    assert pick_column(["id", "text", "label"], None, None, "x") == "text"
    assert pick_column(["doc_id", "body"], None, None, "x") == "body"
    assert pick_column(["key", "body"], None, "key", "x") == "body"
    assert pick_column(["caption", "image", "path"], None, None, "x") == "image"
    with pytest.raises(MmstError, match="several columns.*--column"):
        pick_column(["query", "document"], None, None, "x")
    with pytest.raises(MmstError, match="no column 'body'.*fix --column"):
        pick_column(["text"], "body", None, "x")


def test_bad_inputs_fail_before_anything_is_written(clip, tiny_models, colours, tmp_path):
    path = colours.parent / "broken.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "images/000.png"}\n{"text": "images/missing.png"}\n')
    output = tmp_path / "out.npy"
    with pytest.raises(MmstError, match=r"1 of 3 rows.*row 3, column 'text': images/missing.png: file not found"):
        encode(clip, tiny_models["clip"], path, output)
    assert list(tmp_path.iterdir()) == []
    from sentence_transformers import SentenceTransformer

    bert = SentenceTransformer(str(tiny_models["bert"]))
    with pytest.raises(MmstError, match=r"1 image row\(s\) \(first: row 2, column 'text'\).*takes only text"):
        encode(bert, tiny_models["bert"], _two_rows(colours), output)
    with pytest.raises(MmstError, match="larger than the model's embedding dimension 16"):
        encode(clip, tiny_models["clip"], _two_rows(colours), output, dim=17)
    assert list(tmp_path.iterdir()) == []


def _two_rows(colours):
    path = colours.parent / "two.jsonl"
    path.write_text('{"text": "a caption"}\n{"text": "images/001.png"}\n')
    return path


# ----------------------------------------------------------------------------------------- outputs


def test_every_output_format_reads_back(clip, tiny_models, tmp_path):
    rows = [{"key": f"k{index}", "text": text} for index, text in enumerate(TEXTS)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    expected = clip.encode(TEXTS)
    ids = [row["key"] for row in rows]

    for format in ("npy", "parquet", "jsonl", "safetensors"):
        encode(clip, tiny_models["clip"], source, tmp_path / f"out.{format}", id_column="key", chunk_size=3)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-6)

    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == ["id", "embedding"] and str(table.schema.field("embedding").type) == "list<element: float>"
    assert table["id"].to_pylist() == ids
    np.testing.assert_allclose(np.array(table["embedding"].to_pylist()), expected, atol=1e-6)
    assert json.loads(table.schema.metadata[b"mmst"])["dim"] == 16

    read_ids, vectors = read_jsonl(tmp_path / "out.jsonl")
    assert read_ids == ids
    np.testing.assert_array_equal(vectors.astype(np.float32), np.load(tmp_path / "out.npy"))  # exact round trip

    from safetensors import safe_open

    with safe_open(str(tmp_path / "out.safetensors"), framework="numpy") as handle:
        assert json.loads(handle.metadata()["ids"]) == ids
        assert handle.metadata()["precision"] == "float32"
        np.testing.assert_allclose(handle.get_tensor("embeddings"), expected, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"] + [f"out.{f}" for f in
                                                                          sorted(("npy", "parquet", "jsonl", "safetensors"))]


def test_dim_normalize_and_precisions(clip, tiny_models, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(TEXTS) + "\n")
    full = clip.encode(TEXTS, truncate_dim=12, normalize_embeddings=True)

    encode(clip, tiny_models["clip"], source, tmp_path / "f32.npy", dim=12, normalize=True)
    vectors = np.load(tmp_path / "f32.npy")
    assert vectors.shape == (7, 12) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(vectors, full, atol=1e-6)

    from sentence_transformers.util import quantize_embeddings

    # chunk_size=3: int8 ranges must still span every row of the run, not each chunk. Each quantised
    # output is compared with the same chunked run's float vectors, exactly; against `vectors` (one
    # call, other padding) the floats agree only to the last bits (a fresh install once saw 6e-8).
    common = {"dim": 12, "normalize": True, "chunk_size": 3}
    encode(clip, tiny_models["clip"], source, tmp_path / "chunked.npy", **common)
    chunked = np.load(tmp_path / "chunked.npy")
    np.testing.assert_allclose(chunked, vectors, atol=1e-6)
    encode(clip, tiny_models["clip"], source, tmp_path / "f16.npy", precision="float16", **common)
    encode(clip, tiny_models["clip"], source, tmp_path / "i8.safetensors", precision="int8", **common)
    encode(clip, tiny_models["clip"], source, tmp_path / "bin.npy", precision="ubinary", **common)
    np.testing.assert_array_equal(np.load(tmp_path / "f16.npy"), chunked.astype(np.float16))
    from safetensors.numpy import load_file

    int8 = load_file(str(tmp_path / "i8.safetensors"))
    assert int8["embeddings"].dtype == np.int8
    np.testing.assert_array_equal(int8["embeddings"], quantize_embeddings(chunked, precision="int8"))
    np.testing.assert_array_equal(int8["int8_ranges"], np.vstack((chunked.min(0), chunked.max(0))))
    binary = np.load(tmp_path / "bin.npy")
    assert binary.shape == (7, 2) and binary.dtype == np.uint8
    np.testing.assert_array_equal(binary, quantize_embeddings(chunked, precision="ubinary"))


def test_metadata_says_whether_the_vectors_are_unit_length(clip, tiny_models, tmp_path):
    from safetensors import safe_open
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize
    import pyarrow.parquet as pq

    source = tmp_path / "in.txt"
    source.write_text("\n".join(TEXTS) + "\n")
    # The model's own Normalize makes unit vectors without --normalize; cutting them with --dim does not.
    normalizing = SentenceTransformer(modules=[clip[0], Normalize()])
    cases = {
        "own.parquet": (normalizing, {}, True),
        "cut.parquet": (normalizing, {"dim": 12}, False),
        "plain.safetensors": (clip, {}, False),
        "flag.safetensors": (clip, {"normalize": True}, True),
    }
    for name, (model, options, expected) in cases.items():
        result, _ = encode(model, tiny_models["clip"], source, tmp_path / name, **options)
        assert result.summary["unit_length"] is expected, name
        assert result.summary["normalize"] is options.get("normalize", False), name
        if name.endswith(".parquet"):
            metadata = json.loads(pq.read_table(tmp_path / name).schema.metadata[b"mmst"])
        else:
            with safe_open(str(tmp_path / name), framework="numpy") as handle:
                metadata = {key: json.loads(value) for key, value in handle.metadata().items() if key in ("normalize", "unit_length")}
        assert (metadata["normalize"], metadata["unit_length"]) == (options.get("normalize", False), expected), name


def test_task_and_prompt_reach_the_model(clip, tiny_models, tmp_path, monkeypatch):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(TEXTS) + "\n")
    calls = []
    original = clip.encode_query
    monkeypatch.setattr(clip, "encode_query", lambda inputs, **kw: calls.append(kw["prompt"]) or original(inputs, **kw))
    encode(clip, tiny_models["clip"], source, tmp_path / "q.npy", task="query", prompt="search: ")
    assert calls == ["search: "]
    np.testing.assert_allclose(np.load(tmp_path / "q.npy"), clip.encode(TEXTS, prompt="search: "), atol=1e-6)


def test_stdout_stream_in_process(clip, tiny_models, tmp_path):
    stdout = io.StringIO()
    encode(clip, tiny_models["clip"], "-", "-", stdin=io.StringIO("\n".join(TEXTS)), stdout=stdout, chunk_size=2)
    ids, vectors = read_jsonl(stdout.getvalue())
    assert ids == list(range(7))
    np.testing.assert_allclose(vectors, clip.encode(TEXTS), atol=1e-6)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ resume


class Interrupt(Exception):
    pass


def test_resume_after_an_interruption_skips_finished_chunks(clip, tiny_models, tmp_path, monkeypatch):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(TEXTS) + "\n")
    output = tmp_path / "out" / "vectors.npy"

    def stop_after_first(index):
        if index == 0:
            raise Interrupt

    with pytest.raises(Interrupt):
        encode(clip, tiny_models["clip"], source, output, chunk_size=3, on_chunk=stop_after_first)
    parts = parts_folder(output)
    assert sorted(p.name for p in output.parent.iterdir()) == [".vectors.npy.parts"]  # nothing under the final name
    assert sorted(p.name for p in parts.iterdir()) == ["manifest.json", "part-000000.npy"]
    manifest = json.loads((parts / "manifest.json").read_text())
    assert manifest["count"] == 7 and manifest["chunk_size"] == 3

    # Other options than the parts were made with: refused, and the parts are kept.
    with pytest.raises(MmstError, match="--resume: the parts .* another dim"):
        encode(clip, tiny_models["clip"], source, output, chunk_size=3, resume=True, dim=8)
    assert (parts / "part-000000.npy").exists()

    encoded = []
    original = clip.encode
    monkeypatch.setattr(clip, "encode", lambda inputs, **kw: encoded.extend(inputs) or original(inputs, **kw))
    result, notes = encode(clip, tiny_models["clip"], source, output, chunk_size=3, resume=True, precision="float16")
    assert (result.reused_chunks, result.encoded_chunks) == (1, 2)
    assert sorted(encoded) == sorted(TEXTS[3:])  # the first chunk was not recomputed (order: by length)
    assert any("resuming: 1 of 3 chunks" in note for note in notes)
    assert not parts.exists() and sorted(p.name for p in output.parent.iterdir()) == ["vectors.npy"]
    np.testing.assert_array_equal(np.load(output), clip.encode(TEXTS).astype(np.float16))


def test_without_resume_an_old_parts_folder_is_discarded(clip, tiny_models, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(TEXTS) + "\n")
    output = tmp_path / "v.npy"
    parts = parts_folder(output)
    parts.mkdir()
    np.save(parts / "part-000000.npy", np.zeros((3, 16), dtype=np.float32))
    (parts / "manifest.json").write_text("{}")
    _, notes = encode(clip, tiny_models["clip"], source, output, chunk_size=3)
    assert any("discarding" in note for note in notes) and not parts.exists()
    np.testing.assert_allclose(np.load(output), clip.encode(TEXTS), atol=1e-6)


def test_multi_process_pool_keeps_order_across_modalities(clip, tiny_models, colours, tmp_path):
    rows = [json.loads(line) for line in colours.read_text().splitlines()]
    path = colours.parent / "mixed-pool.jsonl"
    values = [value for row in rows[:4] for value in (row["image"], row["caption"])]
    path.write_text("".join(json.dumps({"text": value}) + "\n" for value in values))
    output = tmp_path / "pool.npy"
    encode(clip, tiny_models["clip"], path, output, device="cpu,cpu", chunk_size=5)
    vectors = np.load(output)
    np.testing.assert_allclose(vectors[1::2], clip.encode([row["caption"] for row in rows[:4]]), atol=1e-5)
    np.testing.assert_allclose(vectors[0::2], clip.encode(image_paths(colours, rows[:4])), atol=1e-5)


# --------------------------------------------------------------------------------------------- CLI


def test_cli_json_summary_and_vectors_equal_model_encode(clip, tiny_models, colours, tmp_path):
    output = tmp_path / "pairs.safetensors"
    summary = run_json("encode", str(colours), "--column", "image", "--model", str(tiny_models["clip"]), "-o", str(output))
    assert {key: summary[key] for key in ("count", "dim", "precision", "output")} == {
        "count": 6, "dim": 16, "precision": "float32", "output": str(output)}  # fmt: skip
    assert summary["model"] == str(tiny_models["clip"]) and summary["inputs"] == str(colours) and summary["seconds"] > 0
    assert summary["column"] == "image" and summary["modalities"] == {"image": 6}
    from safetensors.numpy import load_file

    rows = [json.loads(line) for line in colours.read_text().splitlines()]
    np.testing.assert_allclose(load_file(str(output))["embeddings"], clip.encode(image_paths(colours, rows)), atol=1e-5)


def test_cli_streams_pure_jsonl_from_stdin_to_stdout(clip, tiny_models, colours):
    rows = [json.loads(line) for line in colours.read_text().splitlines()]
    lines = [rows[0]["caption"], rows[0]["image"], rows[1]["caption"]]
    result = subprocess.run(
        [MMST, "encode", "-", "--model", str(tiny_models["clip"]), "-o", "-"],
        input="\n".join(lines) + "\n", cwd=colours.parent, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    ids, vectors = read_jsonl(result.stdout)  # every stdout line is a jsonl record
    assert ids == [0, 1, 2]
    np.testing.assert_allclose(vectors[[0, 2]], clip.encode([lines[0], lines[2]]), atol=1e-6)
    np.testing.assert_allclose(vectors[1], clip.encode(image_paths(colours, rows[:1]))[0], atol=1e-5)
    assert "encoded 3 inputs (1 image, 2 text) -> 16-d float32 to stdout" in result.stderr


def test_cli_missing_media_is_one_line_error_naming_the_row_and_leaves_nothing(tiny_models, colours, tmp_path):
    path = colours.parent / "missing.csv"
    path.write_text("text\na caption\nimages/001.png\nimages/nope.png\n")
    output = tmp_path / "out.parquet"
    result = run_mmst_process("encode", str(path), "--model", str(tiny_models["clip"]), "-o", str(output))
    assert_one_line_error(result, 2, "row 3, column 'text'", "images/nope.png", "file not found")
    assert list(tmp_path.iterdir()) == []


def test_cli_usage_errors_and_help_import_no_ml_library(tmp_path):
    result = run_mmst("encode", "x.jsonl", "-o", "-", "--json")
    assert_one_line_error(result, 2, "--json", "-o -")
    result = run_mmst("encode", "x.jsonl", "-o", str(tmp_path / "out.bin"))
    assert_one_line_error(result, 2, "cannot tell the output format", "--format")
    result = run_mmst("encode", "x.jsonl", "-o", str(tmp_path / "out.npy"), "--decode-workers", "-1")
    assert_one_line_error(result, 2, "--decode-workers must be 0 or more")
    from tests.test_cli_startup import HEAVY_MODULES, PROBE

    code = PROBE.format(args=["encode", "--help"], heavy=HEAVY_MODULES)
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert probe.stdout.strip().endswith("LOADED:"), probe.stdout


def test_encode_and_index_fill_every_reading_and_embedding_option_from_a_flag_of_its_name_and_check_them_alike(tmp_path):
    """The two option groups take a command's parameters by name: a field that no flag of encode or
    index names, or whose flag's default differs, would silently take another value there."""
    import inspect

    from mmst_cli.cli.encode import encode as encode_command
    from mmst_cli.cli.index import index as index_command
    from mmst_cli.core.encode.settings import CorpusReading, EmbeddingSettings

    for group in (CorpusReading, EmbeddingSettings):
        for command in (encode_command, index_command):
            parameters = inspect.signature(command).parameters
            for field in dataclasses.fields(group):
                assert field.name in parameters, (command.__name__, field.name)
                assert parameters[field.name].default == field.default, (command.__name__, field.name)
    for command, output in (("encode", "out.npy"), ("index", "out.index")):  # before any input is read
        result = run_mmst(command, "missing.jsonl", "-o", str(tmp_path / output), "--chunk-size", "0")
        assert_one_line_error(result, 2, "--chunk-size must be a positive whole number, got 0")
        result = run_mmst(command, "missing.jsonl", "-o", str(tmp_path / output), "--media-root", str(tmp_path / "nowhere"))
        assert_one_line_error(result, 2, "--media-root", "is not a folder")
