"""Input classification: media references are never silently taken as text."""

from __future__ import annotations

import json

from PIL import Image

from mmst_cli.core.data.media import classify_input


def test_plain_text_is_text():
    report = classify_input("a photo of a cat")
    assert (report.modality, report.source, report.problem) == ("text", "text", None)


def test_missing_media_path_is_file_not_found(tmp_path):
    report = classify_input(str(tmp_path / "missing.png"))
    assert report.modality == "image"
    assert report.problem == "file not found"


def test_existing_image_decodes(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (8, 8), "red").save(path)
    assert classify_input(str(path)).problem is None


def test_text_renamed_to_jpg_does_not_decode(tmp_path):
    path = tmp_path / "fake.jpg"
    path.write_text("not an image")
    report = classify_input(str(path))
    assert report.modality == "image"
    assert report.problem.startswith("does not decode as an image")


def test_truncated_audio_does_not_decode(tmp_path):
    path = tmp_path / "clip.wav"
    path.write_bytes(b"RIFF\x00\x00")
    report = classify_input(str(path))
    assert report.modality == "audio"
    assert report.problem.startswith("does not decode as audio")


def test_urls_are_classified_by_extension_without_fetching():
    assert classify_input("https://example.org/cat.JPG").modality == "image"
    assert classify_input("https://example.org/talk.flac").source == "url"
    assert classify_input("https://example.org/page").modality == "text"


def test_multimodal_dict_and_message(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(path)
    pair = classify_input(json.dumps({"text": "a cat", "image": str(path)}))
    assert pair.modality == ("image", "text") and pair.problem is None
    broken = classify_input(json.dumps({"text": "a cat", "image": str(tmp_path / "b.png")}))
    assert broken.problem == "image: file not found"
    message = classify_input(json.dumps({"role": "user", "content": "hi"}))
    assert message.modality == "message"
