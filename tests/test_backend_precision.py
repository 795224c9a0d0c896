"""PRECISION (backend/runtime/precision.py): float32 maps bit-identical to the engine as it
was, bfloat16 within the stated tolerance (torch emulates bfloat16 where the CPU lacks it,
so the numerics run anywhere; speed is bench/, not here), and ``auto``'s choice: float32
without native bfloat16, bfloat16 with it, float32 again when the model's map would move."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import rasterio
import torch

from rsvl.backend import api
from rsvl.backend.errors import InputError
from rsvl.backend.models.dense import DenseEmbedder
from rsvl.backend.runtime import precision as P


def test_float32_engine_is_unchanged_and_bfloat16_is_close(random_model):
    model = random_model({"hsi": 16, "lidar": 1}, 5, pixel_channels=[32])
    rng = np.random.default_rng(0)
    norm = {"hsi": rng.standard_normal((16, 44, 44), dtype=np.float32),
            "lidar": rng.standard_normal((1, 44, 44), dtype=np.float32)}
    text = model.class_embeddings
    default = DenseEmbedder(model).similarity(norm, text)
    as_float32 = DenseEmbedder(model, dtype=torch.float32).similarity(norm, text)
    assert torch.equal(default, as_float32)  # bit-identical
    bf16 = DenseEmbedder(model, dtype=torch.bfloat16).similarity(norm, text)
    assert bf16.dtype == torch.float32 and float((bf16 - default).abs().max()) < 0.05
    ok, detail = P.agreement(default.flatten(1).numpy(), bf16.flatten(1).numpy(), float(model.scale().detach()))
    assert "agrees with float32 on" in detail and isinstance(ok, bool)


def test_auto_follows_the_hardware_and_the_models_check(monkeypatch, caplog):
    monkeypatch.delenv("RSVL_PRECISION", raising=False)
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx2", "fma"})
    with caplog.at_level(logging.INFO, logger="rsvl"):
        choice = P.choose("auto", "cpu", check=lambda dtype: (True, "fine"))
    assert choice.dtype == torch.float32 and "neither AMX nor AVX-512-BF16" in choice.reason
    assert "precision float32 (auto: the CPU has neither" in caplog.text
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx512_bf16", "amx_bf16"})
    choice = P.choose("auto", "cpu", check=lambda dtype: (True, "the class map agrees"))
    assert choice.dtype == torch.bfloat16 and "amx_bf16 and avx512_bf16" in choice.reason
    choice = P.choose("auto", "cpu", check=lambda dtype: (False, "the class map agrees on 98.00 %"))
    assert choice.dtype == torch.float32 and "but the class map agrees on 98.00 %: float32 kept" in choice.reason
    monkeypatch.setenv("RSVL_PRECISION", "float32")
    assert P.choose("auto", "cpu", check=lambda dtype: (True, "")).reason == "asked (RSVL_PRECISION)"
    with pytest.raises(InputError, match="float16 is for CUDA GPUs"):
        P.choose("float16", "cpu")
    with pytest.raises(InputError, match="PRECISION must be one of"):
        P.choose("double", "cpu")


def test_classify_in_bfloat16_and_the_fallback(trained_model, tmp_path, monkeypatch, caplog):
    model_path, _result, layers = trained_model
    api.classify(str(model_path), layers, str(tmp_path / "f32.tif"), device="cpu", precision="float32",
                 confidence=str(tmp_path / "c32.tif"))
    api.classify(str(model_path), layers, str(tmp_path / "bf16.tif"), device="cpu", precision="bfloat16",
                 confidence=str(tmp_path / "c16.tif"))
    with rasterio.open(tmp_path / "f32.tif") as a, rasterio.open(tmp_path / "bf16.tif") as b:
        same = (a.read(1) == b.read(1)).mean()
    with rasterio.open(tmp_path / "c32.tif") as a, rasterio.open(tmp_path / "c16.tif") as b:
        moved = np.nanmax(np.abs(a.read(1) - b.read(1)))
    assert same > 0.99 and moved < 0.05
    # auto on a (mocked) capable CPU: bfloat16 when the probe agrees, float32 when it does not
    monkeypatch.delenv("RSVL_PRECISION", raising=False)
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx512_bf16"})
    with caplog.at_level(logging.INFO, logger="rsvl"):
        api.classify(str(model_path), layers, str(tmp_path / "auto.tif"), device="cpu")
    assert "precision bfloat16 (auto: the CPU has avx512_bf16; the class map agrees" in caplog.text or \
        "float32 kept" in caplog.text, caplog.text
    monkeypatch.setattr(P, "SAME_CLASS", 1.01)  # no model can pass: auto falls back
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rsvl"):
        api.classify(str(model_path), layers, str(tmp_path / "fallback.tif"), device="cpu")
    assert "float32 kept" in caplog.text
    with rasterio.open(tmp_path / "f32.tif") as a, rasterio.open(tmp_path / "fallback.tif") as b:
        assert np.array_equal(a.read(1), b.read(1))
    with pytest.raises(InputError, match="needs the dense engine"):
        api.classify(str(model_path), layers, str(tmp_path / "p.tif"), device="cpu", method="patch",
                     precision="bfloat16")


def test_checkpoint_image_tower_in_bfloat16(rgb_checkpoint, tmp_path, monkeypatch, caplog):
    """A pretrained checkpoint's zero-shot map in bfloat16 (the image tower cast, the text
    tower and the scores float32): close to float32's; auto checks the tower on probe windows."""
    from rsvl.backend.io.raster import LayerSpec

    ckpt, preset, scene, _arch = rgb_checkpoint
    layers = [LayerSpec(scene, "ms")]
    maps = {}
    for precision in ("float32", "bfloat16"):
        out = tmp_path / f"{precision}.tif"
        api.query(ckpt, layers, ["water", "forest"], output_similarity=str(out), preset=preset, tile_size=32,
                  stride=16, device="cpu", precision=precision)
        with rasterio.open(out) as ds:
            maps[precision] = ds.read()
    assert np.array_equal(np.isnan(maps["float32"]), np.isnan(maps["bfloat16"]))
    assert np.nanmax(np.abs(maps["float32"] - maps["bfloat16"])) < 0.05
    monkeypatch.delenv("RSVL_PRECISION", raising=False)
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx512_bf16"})
    with caplog.at_level(logging.INFO, logger="rsvl"):
        api.query(ckpt, layers, ["water", "forest"], output_similarity=str(tmp_path / "auto.tif"), preset=preset,
                  tile_size=32, stride=16, device="cpu")
    assert "probe windows the image embeddings keep a cosine of at least" in caplog.text, caplog.text


def test_explorer_in_bfloat16(trained_model, tmp_path):
    """The Explore path takes PRECISION too: a bfloat16 view is close to float32's, and the two
    are cached apart."""
    from rsvl.backend.mapping.explore import EmbeddingCache

    model_path, _result, layers = trained_model
    cache = EmbeddingCache()
    with api.open_explorer(str(model_path), layers, device="cpu", precision="float32", cache=cache) as ex32:
        v32 = ex32.embed()
        s32 = ex32.prompts(v32, ["water"])
    with api.open_explorer(str(model_path), layers, device="cpu", precision="bfloat16", cache=cache) as ex16:
        assert ex16.embedder.dtype == torch.bfloat16
        v16 = ex16.embed()
        s16 = ex16.prompts(v16, ["water"])
    assert v16.key != v32.key and len(cache.views) == 2 and v16.seconds > 0
    assert np.nanmax(np.abs(s16 - s32)) < 0.05
