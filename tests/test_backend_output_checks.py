"""Outputs that cannot be written are reported before the long work starts (issue 9,
fault sweep): a folder that cannot be created, too little free space."""

from __future__ import annotations

import shutil
from collections import namedtuple

import pytest

from rsvl.backend import api
from rsvl.backend.errors import InputError


def test_an_output_folder_that_cannot_be_created_is_named(trained_model, scene, tmp_path):
    model_path, _result, layers = trained_model
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder would go")
    with pytest.raises(InputError, match=r"OUTPUT: .*not-a-folder' is a file, so the folder .* cannot be created"):
        api.classify(str(model_path), layers, str(blocker / "sub" / "classes.tif"), device="cpu")
    steps = []
    with pytest.raises(InputError, match="OUTPUT_MODEL: .*is a file"):
        api.train(layers, str(scene.labels), str(blocker / "model.safetensors"), epochs=2, device="cpu",
                  progress=lambda f, m: steps.append(m))
    assert steps == []  # refused before reading anything


def test_too_little_free_space_is_reported_before_classifying(trained_model, tmp_path, monkeypatch):
    model_path, _result, layers = trained_model
    usage = namedtuple("usage", "total used free")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 4096, 4096))  # 4 KiB free
    steps = []
    message = r"OUTPUT, OUTPUT_SIMILARITY: .* has 4.0 KiB free but the output\(s\) may need up to 38.2 KiB"
    with pytest.raises(InputError, match=message):
        api.classify(str(model_path), layers, str(tmp_path / "c.tif"), similarity=str(tmp_path / "s.tif"),
                     device="cpu", tile_size=16, progress=lambda f, m: steps.append(m))
    assert not any("window" in m for m in steps) and not list(tmp_path.iterdir())
    monkeypatch.setattr(shutil, "disk_usage", real)
    api.classify(str(model_path), layers, str(tmp_path / "c.tif"), device="cpu")  # enough room: it runs
    assert (tmp_path / "c.tif").exists()
