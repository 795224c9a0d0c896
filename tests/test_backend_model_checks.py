"""Inputs are checked against the model (issue 13, item 5): band order when both sides
name their bands, and pixel size against the training grid."""

from __future__ import annotations

import logging
import os

import pytest
import rasterio
from rasterio.transform import from_origin

from rsvl.backend import api
from rsvl.backend.errors import ModelMismatchError
from rsvl.backend.io.raster import LayerSpec


def _copy(src_path, dst_path, helpers, reverse=False, pixel=None):
    with rasterio.open(src_path) as ds:
        data, descriptions, t, nodata = ds.read(), list(ds.descriptions), ds.transform, ds.nodata
    if reverse:
        data, descriptions = data[::-1], descriptions[::-1]
    if pixel is not None:
        t = from_origin(t.c, t.f, pixel, pixel)
    return helpers.write_raster(dst_path, data, t, nodata=nodata, descriptions=descriptions)


def test_reordered_named_bands_are_refused_unless_forced(trained_model, shared_scene, tmp_path, helpers, caplog):
    model_path, _result, layers = trained_model
    hsi = _copy(shared_scene.paths["hsi"], tmp_path / "reversed.tif", helpers, reverse=True)
    reordered = [LayerSpec(str(hsi), "hsi"), layers[1]]
    with pytest.raises(ModelMismatchError, match=r"hsi bands are in another order than in training \(b0 is band 24"):
        api.classify(str(model_path), reordered, str(tmp_path / "c.tif"), device="cpu")
    assert not (tmp_path / "c.tif").exists()
    with caplog.at_level(logging.WARNING, logger="rsvl"):
        api.classify(str(model_path), reordered, str(tmp_path / "c.tif"), device="cpu", force=True)
    assert (tmp_path / "c.tif").exists() and "another order" in caplog.text
    # Without band names on the input there is nothing to compare: accepted as before.
    plain = helpers.write_raster(tmp_path / "plain.tif", rasterio.open(shared_scene.paths["hsi"]).read(),
                                 shared_scene.transform, nodata=-1)
    api.classify(str(model_path), [LayerSpec(str(plain), "hsi"), layers[1]], str(tmp_path / "p.tif"), device="cpu")


def test_pixel_size_far_from_training_is_refused_and_near_is_warned(trained_model, shared_scene, tmp_path, helpers,
                                                                     caplog):
    model_path, _result, _layers = trained_model  # trained on a 10 m grid

    def layers_at(pixel):
        return [LayerSpec(str(_copy(shared_scene.paths[m], tmp_path / f"{m}{pixel}.tif", helpers, pixel=pixel)), m)
                for m in ("hsi", "lidar")]

    with pytest.raises(ModelMismatchError, match=r"pixel size is 1 but the model was trained on 10 \(10.0x finer\)"):
        api.classify(str(model_path), layers_at(1.0), str(tmp_path / "a.tif"), device="cpu")
    with caplog.at_level(logging.WARNING, logger="rsvl"):
        api.classify(str(model_path), layers_at(20.0), str(tmp_path / "b.tif"), device="cpu")
    assert "2.0x coarser" in caplog.text and (tmp_path / "b.tif").exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rsvl"):
        api.classify(str(model_path), layers_at(12.0), str(tmp_path / "c.tif"), device="cpu")
    assert "pixel size" not in caplog.text  # within a factor of 1.5: silent


def _rewrite_header(src, dst, edit):
    """Copy a safetensors file with its JSON header changed by ``edit`` (dict → None)."""
    import json

    raw = open(src, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    edit(header)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    open(dst, "wb").write(len(blob).to_bytes(8, "little") + blob + raw[8 + n:])
    return str(dst)


def test_damaged_and_newer_model_files_get_clear_errors(trained_model, tmp_path):
    """A truncated file, changed weight bytes and a newer format each name the problem and
    what to do; none gives a traceback or a map."""
    import json

    from rsvl.backend.errors import ModelFileError
    from rsvl.backend.models.modelfile import FORMAT_VERSION

    model_path, _result, layers = trained_model
    raw = open(model_path, "rb").read()

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(raw[: len(raw) * 2 // 3])
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(raw[:-40] + bytes([raw[-40] ^ 0x10]) + raw[-39:])

    def newer(header):
        meta = json.loads(header["__metadata__"]["rsvl"])
        meta["format_version"] = FORMAT_VERSION + 1  # newer than this rsvl reads
        meta["rsvl_version"] = "99.0"
        header["__metadata__"]["rsvl"] = json.dumps(meta)

    newer_path = _rewrite_header(model_path, tmp_path / "newer.safetensors", newer)
    cases = {
        str(truncated): r"is truncated: [\d,]+ of the [\d,]+ bytes its header describes",
        str(flipped): r"is corrupted: its weights do not match the checksum",
        newer_path: r"was made by rsvl 99.0 .*this is rsvl .*update rsvl",
    }
    for path, message in cases.items():
        out = tmp_path / (os.path.basename(path) + ".tif")
        with pytest.raises(ModelFileError, match=message):
            api.classify(path, layers, str(out), device="cpu")
        assert not out.exists()
    # The unchanged file still loads (the checksum is right).
    api.classify(str(model_path), layers, str(tmp_path / "fine.tif"), device="cpu")


def test_normalize_scene_undoes_a_date_like_gain_and_offset(trained_model, shared_scene, tmp_path, helpers):
    """Another date changes each band by a gain and an offset: NORMALIZE=scene standardises
    the scene by its own statistics, which removes that change; the training scene's
    statistics do not (for MMLGNet, trained without spectral jitter: the spectral-spatial
    default is trained to shrug off such shifts on this easy scene)."""
    import numpy as np

    from rsvl.backend.data.augment import shift_scene

    _path, _result, layers = trained_model
    model_path = tmp_path / "mmlgnet.safetensors"
    api.train(layers, str(shared_scene.labels), str(model_path), **{**helpers.fast, "recipe": "mmlgnet"})
    with rasterio.open(shared_scene.paths["hsi"]) as ds:
        data, descriptions, t, nodata = ds.read(), list(ds.descriptions), ds.transform, ds.nodata
    rng = np.random.default_rng(0)
    gains = rng.uniform(1.2, 1.5, data.shape[0])
    offsets = rng.uniform(0.2, 0.5, data.shape[0]) * np.abs(data.reshape(data.shape[0], -1).mean(1))
    shifted = helpers.write_raster(tmp_path / "shifted.tif", shift_scene(data, gains, offsets, nodata), t,
                                   nodata=nodata, descriptions=descriptions)
    shifted_layers = [LayerSpec(str(shifted), "hsi"), layers[1]]
    maps = {}
    for name, lay, norm in [("orig", layers, "scene"), ("shift_scene", shifted_layers, "scene"),
                            ("shift_model", shifted_layers, "model"), ("orig_model", layers, "model")]:
        api.classify(str(model_path), lay, str(tmp_path / f"{name}.tif"), device="cpu", normalize=norm)
        with rasterio.open(tmp_path / f"{name}.tif") as ds:
            maps[name] = ds.read(1)
    truth = shared_scene.truth
    acc = {k: float((v == truth).mean()) for k, v in maps.items()}
    assert (maps["shift_scene"] == maps["orig"]).mean() > 0.995
    assert acc["shift_scene"] > acc["shift_model"] + 0.03, acc
    assert acc["orig"] > 0.8 and acc["orig_model"] > 0.8, acc


def test_a_truncated_model_is_named_truncated_whatever_its_header_length(tmp_path):
    """The first byte of a safetensors file is the low byte of its header's length: 0x80
    there (a pickle's first byte) must not make a cut-off model look like a pickle."""
    import json
    import struct

    from rsvl.backend.models.modelfile import describe_file

    for low in (0x80, 0x50, ord("{")):
        text = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})
        text += " " * ((low - len(text)) % 256)  # trailing spaces: allowed header padding
        path = tmp_path / f"cut{low}.safetensors"
        path.write_bytes(struct.pack("<Q", len(text)) + text.encode() + bytes(8))  # 8 of the 16 data bytes
        assert path.read_bytes()[0] == low
        size = 8 + len(text) + 8
        assert describe_file(str(path)).startswith(f"is truncated: {size:,} of the {size + 8:,} bytes"), low
