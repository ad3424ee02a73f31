"""Bad input, interrupted runs and untrusted content, through the real CLI (issue: reliability)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.data_factory import write_colour_pairs, write_text_pairs, write_tone_pairs
from tests.helpers import MMST, assert_one_line_error, run_json, run_mmst


@pytest.fixture(scope="module")
def text_pairs(tmp_path_factory) -> Path:
    return write_text_pairs(tmp_path_factory.mktemp("text"), count=16)


def _train(tiny_models, data, out, *extra):
    return run_mmst("train-embed", "--model", str(tiny_models["bert"]), "--data", str(data),
                    "--output-dir", str(out), "--max-steps", "1", *extra)  # fmt: skip


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("broken.jsonl", '{"query": "a", "answer": "b"}\n{"query": "c", "answer": \n', "line 2: not valid JSON"),
        ("list.jsonl", '["a", "b"]\n', "line 1: expected a JSON object"),
        ("wrong.csv", "x,y\n1,2\n", "no column 'query'; its columns are ['x', 'y']"),
        ("bad.parquet", "not parquet at all", "could not be read"),
        ("empty.jsonl", "", "is empty"),
        ("data.xml", "<a/>", "unknown format '.xml'"),
    ],
)
def test_unreadable_data_files(tmp_path, tiny_models, name, content, fragment):
    path = tmp_path / name
    path.write_text(content)
    result = _train(tiny_models, path, tmp_path / "out", "--columns", "query,answer")
    assert_one_line_error(result, 2, name, fragment)
    assert not (tmp_path / "out").exists()


def test_missing_data_and_unknown_names(tmp_path, tiny_models, text_pairs):
    assert_one_line_error(_train(tiny_models, tmp_path / "nope.jsonl", tmp_path / "o"), 2, "does not exist")
    # Relative and shaped like a Hub id, but a file name: a missing path, not a failed Hub lookup.
    missing = run_mmst("train-embed", "--model", str(tiny_models["bert"]), "--data", "data/pairs.jsonl", cwd=tmp_path)
    assert_one_line_error(missing, 2, "data 'data/pairs.jsonl' does not exist", f"looked in {tmp_path}")
    assert_one_line_error(run_mmst("detect", "./models/m", cwd=tmp_path), 2, "does not exist", f"looked in {tmp_path}")
    assert_one_line_error(run_mmst("train-embed", "--loss", "triplet"), 2, "use one of mnrl")
    assert_one_line_error(run_mmst("train-embed", "--batch-sampler", "random"), 2, "use one of no-duplicates")
    assert_one_line_error(run_mmst("train-embed", "--report-to", "wandb"), 2, "use one of none, tensorboard")
    assert_one_line_error(run_mmst("train-embed", "--freeze", "video"), 2, "not a tower")
    # Router-shaping flags on a model that is not composed here were accepted and ignored.
    for flags, start in ((["--dim", "64"], f"--model {str(tiny_models['bert'])!r}"), (["--image-size", "96", "--freeze", "image"], "the embedded default")):
        model = ["--model", str(tiny_models["bert"]), "--data", str(text_pairs)] if start.startswith("--model") else []
        shaped = run_mmst("train-embed", *model, *flags, "--output-dir", str(tmp_path / "shaped"))
        assert_one_line_error(shaped, 2, f"{', '.join(flags[::2])} shape a Router", f"{start} keeps its own")
    assert_one_line_error(run_mmst("encode", str(text_pairs), "-o", str(tmp_path / "x.bin")), 2)
    assert_one_line_error(run_mmst("detect", "no-such-owner/no-such-model"), 2, "offline")
    columns = next(iter(json.loads(text_pairs.read_text().splitlines()[0])))
    repeated = _train(tiny_models, text_pairs, tmp_path / "o", "--columns", f"{columns},{columns}")
    assert_one_line_error(repeated, 2, f"--columns names {columns!r} twice")


def test_media_that_escapes_the_data_folder_is_refused(tmp_path, tiny_models):
    data = write_colour_pairs(tmp_path / "data", count=4)
    outside = write_colour_pairs(tmp_path / "elsewhere", count=1)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    rows[1]["image"] = "../elsewhere/images/000.png"
    rows[2]["image"] = str((outside.parent / "images" / "000.png").resolve())
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = ["--model", str(tiny_models["clip"]), "--data", str(data), "--max-steps", "1", "--batch-size", "2"]
    refused = run_mmst("train-embed", *common, "--output-dir", str(tmp_path / "a"))
    assert_one_line_error(refused, 2, "2 of 4 rows", "row 2", "resolves outside the data folder", "--allow-outside-root")
    allowed = run_json("train-embed", *common, "--allow-outside-root", "--output-dir", str(tmp_path / "b"))
    assert allowed["train_rows"] == 4
    encode = run_mmst("encode", str(data), "--column", "image", "-o", str(tmp_path / "e.npy"))
    assert_one_line_error(encode, 2, "resolves outside the data folder")
    assert not (tmp_path / "e.npy").exists()


@pytest.fixture
def outside_media(tmp_path) -> dict[str, Path]:
    """A data folder with one good image and tone, and an image and a tone outside it."""
    from tests.data_factory import write_colour_pairs, write_tone_pairs

    inside = write_colour_pairs(tmp_path / "data", count=2).parent
    write_tone_pairs(inside, count=1)
    elsewhere = write_colour_pairs(tmp_path / "elsewhere", count=1).parent
    write_tone_pairs(elsewhere, count=1)
    return {"inside": inside, "image": elsewhere / "images" / "000.png", "audio": elsewhere / "audio" / "000.wav"}


@pytest.mark.parametrize("source", ["txt line", "stdin line", "folder symlink", "image cell", "audio cell"])
def test_every_source_of_a_media_path_passes_the_one_gate(outside_media, source, monkeypatch):
    import io

    import datasets

    from mmst_cli.core.data.tables import load_pair_data
    from mmst_cli.core.encode.inputs import read_inputs
    from mmst_cli.core.errors import MmstError

    inside, image = outside_media["inside"], outside_media["image"]
    escape = os.path.relpath(image, inside)  # ../elsewhere/images/000.png
    if source == "txt line":
        (inside / "inputs.txt").write_text(f"a caption\nimages/000.png\n{escape}\n")
        load = lambda **allow: read_inputs(str(inside / "inputs.txt"), **allow)  # noqa: E731
    elif source == "stdin line":
        monkeypatch.chdir(inside)
        load = lambda **allow: read_inputs("-", stdin=io.StringIO(f"images/001.png\n{image}\n"), **allow)  # noqa: E731
    elif source == "folder symlink":
        (inside / "images" / "link.png").symlink_to(image)
        load = lambda **allow: read_inputs(str(inside / "images"), **allow)  # noqa: E731
    else:  # an HF feature column whose cells hold a path and no bytes
        modality = "image" if source == "image cell" else "audio"
        good = str(inside / ("images/000.png" if modality == "image" else "audio/000.wav"))
        feature = datasets.Image() if modality == "image" else datasets.Audio()
        # Written by hand: datasets' own writers embed the bytes, other tools leave only the path.
        import pyarrow as pa
        import pyarrow.parquet as pq

        cells = pa.array([{"bytes": None, "path": path} for path in (good, str(outside_media[modality]))],
                         pa.struct([("bytes", pa.binary()), ("path", pa.string())]))  # fmt: skip
        features = datasets.Features({"caption": datasets.Value("string"), modality: feature})
        table = pa.table({"caption": ["a", "b"], modality: cells})
        metadata = {"huggingface": json.dumps({"info": {"features": features.to_dict()}})}
        pq.write_table(table.replace_schema_metadata(metadata), inside / "cells.parquet")
        load = lambda **allow: load_pair_data(str(inside / "cells.parquet"), audio_sampling_rate=8000, **allow)  # noqa: E731
    with pytest.raises(MmstError, match="resolves outside the data folder.*--allow-outside-root"):
        load()
    load(allow_outside_root=True)  # the one way past the gate


def test_media_mmst_downloaded_itself_passes_the_gate(tmp_path, monkeypatch):
    from mmst_cli.core.data.media import classify_string, media_cache_dir

    monkeypatch.setenv("MMST_CACHE", str(tmp_path / "cache"))
    cached = media_cache_dir() / "0123.png"
    cached.parent.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(cached)
    (tmp_path / "data").mkdir()
    assert classify_string(str(cached), tmp_path / "data", confine_to=tmp_path / "data").problem is None
    elsewhere = tmp_path / "other.png"
    Image.new("RGB", (8, 8)).save(elsewhere)
    assert "outside" in classify_string(str(elsewhere), tmp_path / "data", confine_to=tmp_path / "data").problem


def test_bad_audio(tmp_path, tiny_models):
    data = write_tone_pairs(tmp_path, count=3)
    (tmp_path / "audio" / "001.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVE")  # truncated header
    import numpy as np
    import soundfile

    soundfile.write(tmp_path / "audio" / "002.wav", np.zeros(0, dtype="float32"), 16000)  # no samples
    result = run_mmst("train-embed", "--text-encoder", str(tiny_models["bert"]), "--audio-encoder",
                      str(tiny_models["wav2vec2"]), "--dim", "8", "--data", str(data), "--output-dir", str(tmp_path / "o"))  # fmt: skip
    assert_one_line_error(result, 2, "2 of 3 rows", "row 2", "does not decode as audio")
    assert "row 3" in result.stderr and ("no samples" in result.stderr or "file is empty" in result.stderr)


def test_an_audio_clip_too_short_for_the_model_is_a_named_error(tmp_path, tiny_models):
    """A 1-sample clip crashed wav2vec2's convolutions; it is now refused before the model runs."""
    import numpy as np
    import soundfile

    data = write_tone_pairs(tmp_path, count=3)
    soundfile.write(tmp_path / "audio" / "002.wav", np.full(1, 0.5, dtype="float32"), 16000)
    result = run_mmst("train-embed", "--text-encoder", str(tiny_models["bert"]), "--audio-encoder",
                      str(tiny_models["wav2vec2"]), "--dim", "8", "--data", str(data), "--output-dir", str(tmp_path / "o"))  # fmt: skip
    assert_one_line_error(result, 2, "row 3", "002.wav", "1 sample(s)", "at least 25 ms")
    (tmp_path / "clips.txt").write_text("audio/001.wav\naudio/002.wav\n")
    encode = run_mmst("encode", str(tmp_path / "clips.txt"), "--model", str(tiny_models["wav2vec2"]), "-o", str(tmp_path / "v.npy"))
    assert_one_line_error(encode, 2, "line 2", "002.wav", "at least 25 ms")
    assert not (tmp_path / "v.npy").exists()


def test_retrieval_inputs(tmp_path, tiny_models):
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text('{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n')
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    duplicate = run_mmst("evaluate", "--model", str(tiny_models["bert"]), "--data", str(beir))
    assert_one_line_error(duplicate, 2, "corpus", "repeats 1 id(s), e.g. 'd1'")
    run = tmp_path / "run.trec"
    run.write_text("q1 Q0 d1 1 0.5 tag\nq1 Q0 d2 2 oops tag\n")
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 d1 high\n")
    assert_one_line_error(run_mmst("evaluate", "--run", str(run), "--qrels", str(beir / "qrels" / "test.tsv")), 2, ":2:")
    good_run = tmp_path / "good.trec"
    good_run.write_text("q1 Q0 d1 1 0.5 tag\n")
    assert_one_line_error(run_mmst("evaluate", "--run", str(good_run), "--qrels", str(qrels)), 2, ":1:")
    # A BEIR folder missing a part, given as a relative path: named as a retrieval folder, not a Hub lookup.
    (beir / "queries.jsonl").unlink()
    partial = run_mmst("evaluate", "--model", str(tiny_models["bert"]), "--data", "beir", cwd=tmp_path)
    assert_one_line_error(partial, 2, "retrieval folder 'beir' has corpus and qrels but no queries", "add the missing part")
    assert "Hub" not in partial.stderr
    (tmp_path / "empty").mkdir()
    empty = run_mmst("evaluate", "--model", str(tiny_models["bert"]), "--data", "empty", cwd=tmp_path)
    assert_one_line_error(empty, 2, "data folder 'empty' holds nothing mmst can read")


def test_unwritable_output_is_detected_before_work(tmp_path, tiny_models, text_pairs):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = _train(tiny_models, text_pairs, blocker / "run")
    assert_one_line_error(result, 2, "is a file, not a folder")


def test_output_files_that_cannot_be_written_are_refused_before_the_model_loads(tmp_path, tiny_models, text_pairs):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    evaluate = run_mmst("evaluate", "--model", "no-such-owner/no-such-model", "--data", str(text_pairs), "--per-query", str(folder))
    assert_one_line_error(evaluate, 2, "--per-query", "is a folder; name a file in it")  # not the model's error
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    encode = run_mmst("encode", str(text_pairs), "--column", "query", "--model", str(tiny_models["bert"]), "-o", str(a_file / "out.npy"))
    assert_one_line_error(encode, 2, "-o", "is a file, not a folder")
    save_run = run_mmst("evaluate", "--model", "no-such-owner/no-such-model", "--data", str(text_pairs), "--save-run", str(a_file / "r.trec"))
    assert_one_line_error(save_run, 2, "--save-run", "is a file, not a folder")


def test_text_that_is_not_utf8_names_its_line(tmp_path, tiny_models):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("hello\ncaf\u00e9\n".encode("latin-1"))
    common = ["--model", str(tiny_models["bert"]), "-o", str(tmp_path / "v.npy")]
    from_file = run_mmst("encode", str(latin), *common)
    assert_one_line_error(from_file, 2, "line 2 is not UTF-8 text (byte 0xe9 at position 4)", "iconv")
    from_stdin = run_mmst("encode", "-", *common, input=latin.read_bytes())
    assert_one_line_error(from_stdin, 2, "input '-': line 2 is not UTF-8 text")
    assert not (tmp_path / "v.npy").exists()


class _NotATensor:
    """Stands in for whatever a hostile pickle would carry."""


def test_a_model_whose_weights_are_a_pickle_of_objects_is_refused_unread(tmp_path, tiny_models):
    import shutil

    import torch

    model = tmp_path / "pickled"
    shutil.copytree(tiny_models["bert"], model)
    for weights in model.rglob("*.safetensors"):
        weights.unlink()
    torch.save({"payload": _NotATensor()}, model / "pytorch_model.bin")
    result = run_mmst("encode", "-", "--model", str(model), "-o", "-", input="hello\n")
    assert_one_line_error(result, 2, "pickle holding more than tensors", "safetensors")


def test_a_decompression_bomb_is_a_named_row_error(tmp_path, tiny_models, monkeypatch):
    from PIL import Image

    data = write_colour_pairs(tmp_path / "data", count=2)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the 40x40 images are now "bombs" (over twice the limit)
    result = _train(tiny_models, data, tmp_path / "out", "--columns", "caption,image")
    assert_one_line_error(result, 2, "row 1, column 'image'", "too large to decode safely", "could be decompression bomb")
    encode = run_mmst("encode", str(data), "--column", "image", "--model", str(tiny_models["clip"]), "-o", str(tmp_path / "e.npy"))
    assert_one_line_error(encode, 2, "too large to decode safely")


def test_images_the_processor_cannot_read_are_converted_and_broken_ones_refused(tmp_path, tiny_models, monkeypatch):
    """TIFF, BMP, 16-bit and animated files pass the check and then encode; a truncated JPEG fails the check."""
    import numpy as np
    from PIL import Image

    monkeypatch.setenv("MMST_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(pixels).save(folder / "a_reference.png")
    Image.fromarray(pixels).save(folder / "b_same.tiff")
    Image.fromarray(pixels).save(folder / "c_same.bmp")
    Image.fromarray(pixels).save(folder / "d_same_animated.gif", save_all=True, append_images=[Image.fromarray(255 - pixels)])
    grey = pixels[:, :, 0]
    Image.fromarray(grey).save(folder / "e_grey.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "f_grey_16bit.png")
    Image.fromarray(pixels).convert("CMYK").save(folder / "g_cmyk.tiff")
    output = tmp_path / "vectors.npy"
    result = run_mmst("encode", str(folder), "--model", str(tiny_models["clip"]), "-o", str(output))
    assert result.returncode == 0, result.stderr
    vectors = np.load(output)
    for same in (1, 2):  # TIFF and BMP of the same pixels embed exactly as the PNG
        np.testing.assert_allclose(vectors[same], vectors[0], atol=1e-5)
    gif = Image.open(folder / "d_same_animated.gif").convert("RGB")  # the GIF palette changes the pixels a little
    assert np.isfinite(vectors[3]).all() and np.asarray(gif).shape == (40, 40, 3)
    np.testing.assert_allclose(vectors[5], vectors[4], atol=1e-5)  # 16-bit scaled to 8, not clipped at 255
    assert len(list((tmp_path / "cache" / "media" / "converted").glob("*.png"))) == 5

    jpeg = folder / "h_truncated.jpg"
    Image.fromarray(pixels).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[:-200])  # Image.verify() alone passes this file
    result = run_mmst("encode", str(folder), "--model", str(tiny_models["clip"]), "-o", str(output))
    assert_one_line_error(result, 2, "h_truncated.jpg", "does not decode as an image", "truncated")


def _limit_file_size(limit: int):
    """For a child process: writes past ``limit`` bytes fail with EFBIG, as on a full disk."""
    import resource

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error from write(), not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_while_encoding_is_exit_1_leaves_no_temporary_and_resumes(tmp_path, tiny_models):
    lines = tmp_path / "texts.txt"
    lines.write_text("".join(f"sentence number {i}\n" for i in range(3000)))
    out = tmp_path / "out" / "vectors.npy"
    command = [MMST, "encode", str(lines), "--model", str(tiny_models["bert"]), "-o", str(out), "--chunk-size", "500"]
    # Each 500-row part (64 KB) fits under the limit; the 384 KB output does not.
    full = subprocess.run(command, capture_output=True, text=True, preexec_fn=_limit_file_size(200_000),
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)  # fmt: skip
    assert full.returncode == 1, full.stderr
    error_lines = [line for line in full.stderr.splitlines() if line.startswith("Error: ")]
    assert len(error_lines) == 1 and "File too large" in error_lines[0] and "free some space" in error_lines[0], full.stderr
    assert "Traceback" not in full.stderr and "unexpected" not in full.stderr
    assert not out.exists()
    left = [path.name for path in out.parent.rglob("*") if path.is_file()]
    assert left and not [name for name in left if name.endswith(".tmp")], left  # finished parts only
    resumed = run_mmst(*command[1:], "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming: 6 of 6 chunks already encoded" in resumed.stderr
    import numpy as np

    assert np.load(out).shape == (3000, 32)


def test_a_full_disk_while_saving_the_model_is_exit_1_and_leaves_no_half_model(tmp_path, tiny_models, text_pairs, monkeypatch):
    import errno

    from sentence_transformers import SentenceTransformer

    save = SentenceTransformer.save

    def save_until_the_disk_is_full(self, path, *args, **kwargs):
        if "checkpoint-" in str(path):  # the trainer's checkpoints fit; the final model does not
            return save(self, path, *args, **kwargs)
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(path) / "model.safetensors"))

    monkeypatch.setattr(SentenceTransformer, "save", save_until_the_disk_is_full)
    out = tmp_path / "run"
    result = _train(tiny_models, text_pairs, out)
    assert_one_line_error(result, 1, "cannot write", "No space left on device", "free some space")
    left = sorted(path.name for path in out.iterdir())
    assert "checkpoints" in left and not [name for name in left if name.endswith(".tmp") or name in ("model", ".mmst-run.lock")], left
    monkeypatch.undo()  # space freed: the run finishes from its checkpoint
    assert run_mmst("train-embed", "--model", str(tiny_models["bert"]), "--data", str(text_pairs), "--output-dir", str(out),
                    "--max-steps", "1", "--resume").returncode == 0  # fmt: skip
    assert (out / "model" / "model.safetensors").is_file()


def test_a_pathologically_long_text_is_cut_before_tokenising_without_changing_its_vector(tmp_path, tiny_models):
    """A 50 MB cell took 11 GiB in the tokenizer; texts are cut at MAX_TEXT_CHARS, past any model's context."""
    import numpy as np

    from mmst_cli.core.data.tables import MAX_TEXT_CHARS

    long_text = "tokens " * (MAX_TEXT_CHARS // 7 + 1000)
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"text": long_text}) + "\n" + json.dumps({"text": long_text[:2000]}) + "\n")
    out = tmp_path / "v.npy"
    result = run_mmst("encode", str(data), "--model", str(tiny_models["bert"]), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "1 text(s) in input" in result.stderr and "were cut" in " ".join(result.stderr.split())
    vectors = np.load(out)
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)  # the model reads its first tokens either way

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"query": "q", "document": long_text}) + "\n" + json.dumps({"query": "r", "document": "d"}) + "\n")
    planned = run_mmst("train-embed", "--model", str(tiny_models["bert"]), "--data", str(pairs), "--dry-run",
                       "--output-dir", str(tmp_path / "run"))  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    assert "1 text(s) in column 'document' are longer than 1,000,000 characters" in " ".join(planned.stderr.split())


def test_trust_remote_code_is_visible_in_the_resolved_config(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("trust-remote-code: true\n")
    resolved = run_mmst("train-embed", "--config", str(config), "--print-config")
    assert "trust_remote_code: true" in resolved.stdout


def _wait_for(stream, prefix: str) -> None:
    for line in stream:
        if line.startswith(prefix):
            return
    raise AssertionError(f"no line starting with {prefix!r}")


def test_ctrl_c_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(tmp_path, tiny_models):
    data = write_colour_pairs(tmp_path / "data", count=16)
    args = ["train-embed", "--model", str(tiny_models["clip"]), "--data", str(data), "--eval-data", str(data),
            "--max-steps", "300", "--batch-size", "4", "--loss", "mnrl", "--json"]  # fmt: skip
    reference = run_json(*args[:-1], "--output-dir", str(tmp_path / "reference"))

    interrupted_dir = tmp_path / "interrupted"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    process = subprocess.Popen([MMST, *args, "--output-dir", str(interrupted_dir)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(process.stderr, "before training")
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and stdout == ""
    assert "run the same command with --resume" in stderr
    checkpoints = list((interrupted_dir / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1 and 0 < int(checkpoints[0].name.split("-")[1]) < 300
    assert not (interrupted_dir / "model").exists()  # no half-finished model under the final name

    resumed = run_json(*args[:-1], "--output-dir", str(interrupted_dir), "--resume")
    assert resumed["train"]["steps"] == reference["train"]["steps"] == 300
    assert resumed["final"]["ndcg@10"] == pytest.approx(reference["final"]["ndcg@10"], abs=0.05)
    assert resumed["train"]["loss_curve"][-1][1] == pytest.approx(reference["train"]["loss_curve"][-1][1], abs=0.5)


def test_sigkill_then_resume_from_the_last_saved_checkpoint(tmp_path, tiny_models):
    data = write_colour_pairs(tmp_path / "data", count=16)
    out = tmp_path / "run"
    args = ["train-embed", "--model", str(tiny_models["clip"]), "--data", str(data), "--max-steps", "400",
            "--batch-size", "4", "--loss", "mnrl", "--save-steps", "40", "--output-dir", str(out)]  # fmt: skip
    process = subprocess.Popen([MMST, *args], env=dict(os.environ, HF_HUB_OFFLINE="1"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while not list(out.glob("checkpoints/checkpoint-*/trainer_state.json")) and time.time() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(out.glob("checkpoints/checkpoint-*")), "no checkpoint was written before the kill"
    resumed = run_json(*args, "--resume")
    assert resumed["train"]["steps"] == 400
    assert (out / "model" / "modules.json").is_file()


@pytest.mark.parametrize("command", ["train-embed", "train-rerank"])
def test_data_is_checked_before_any_model_is_loaded(tmp_path, command):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"query": "a", "answer": \n')
    # The model does not even exist: the data error must come first, as it would for a 7B model.
    result = run_mmst(command, "--model", str(tmp_path / "no-model-here"), "--data", str(broken),
                      "--output-dir", str(tmp_path / "out"))  # fmt: skip
    assert_one_line_error(result, 2, "line 1: not valid JSON")
