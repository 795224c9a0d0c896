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


def test_reduced_engine_with_wider_heads_and_other_dilations():
    """The bfloat16 engine's joined heads: branches of different depth (so different
    dilations and head kernels larger than 1 x 1) beside a pixel branch, on a window that is
    not square and smaller than the compute tile, against the readable dense path."""
    from rsvl.backend.models.mmlgnet import MMLGNet, ModelConfig

    torch.manual_seed(0)
    model = MMLGNet(ModelConfig(bands={"hsi": 6, "lidar": 1}, embed_dim=16, patch_size=11,
                                channels={"hsi": [8], "lidar": [8, 12]}, pixel_channels=[16]), 4).eval()
    engine = DenseEmbedder(model, dtype=torch.bfloat16)
    assert sorted(engine.heads[m].shape[-1] for m in ("hsi", "lidar")) != [1, 1]  # heads wider than 1 x 1
    rng = np.random.default_rng(1)
    norm = {"hsi": rng.standard_normal((6, 23, 47), dtype=np.float32),
            "lidar": rng.standard_normal((1, 23, 47), dtype=np.float32)}
    text = model.class_embeddings
    with torch.no_grad():
        reference = torch.einsum("dhw,kd->khw", model.embed_dense({m: torch.from_numpy(a)[None]
                                                                   for m, a in norm.items()})[0], text)
    reduced = engine.similarity(norm, text)
    assert reduced.shape == reference.shape == (4, 13, 37)
    assert float((reduced - reference).abs().max()) < 0.02


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
    # no /proc/cpuinfo flags (Windows, macOS): torch's CPU capability checks decide
    monkeypatch.setattr(P, "cpu_flags", lambda: set())
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert P.native_bfloat16("cpu") == (True, "the CPU has avx512_bf16")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert P.native_bfloat16("cpu")[0] is False
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


def test_training_precision_choice(monkeypatch, caplog):
    """rsvl:train's PRECISION: auto trains in float32 unless bfloat16 training is the measured
    default (TRAIN_AUTO_REDUCED) and the device has it natively; bfloat16 without native support
    runs with a warning; float16 is for CUDA."""
    monkeypatch.delenv("RSVL_PRECISION", raising=False)
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(P, "TRAIN_AUTO_REDUCED", False)
    choice = P.choose_training("auto", "cpu")
    assert choice.name == "float32" and "not the default" in choice.reason
    monkeypatch.setattr(P, "TRAIN_AUTO_REDUCED", True)
    assert P.choose_training("auto", "cpu").name == "bfloat16"
    monkeypatch.setenv("RSVL_PRECISION", "float32")
    assert P.choose_training("auto", "cpu").name == "float32"
    monkeypatch.delenv("RSVL_PRECISION")
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx2"})
    assert P.choose_training("auto", "cpu").name == "float32"
    with caplog.at_level(logging.WARNING, logger="rsvl"):
        assert P.choose_training("bfloat16", "cpu").name == "bfloat16"
    assert "slower than in float32" in caplog.text
    with pytest.raises(InputError, match="float16 is for CUDA GPUs"):
        P.choose_training("float16", "cpu")


def test_training_in_bfloat16(shared_scene, trained_model, fast_options, tmp_path):
    """PRECISION bfloat16 trains with the forward pass in autocast: another (float32) model of
    about the same validation accuracy, its precision in the header; float32 is today's run."""
    from safetensors.torch import load_file

    path32, result32, layers = trained_model
    out = tmp_path / "bf16.safetensors"
    result16 = api.train(layers, str(shared_scene.labels), str(out), **fast_options, precision="bfloat16")
    assert result16.header["training"]["precision"] == "bfloat16"
    assert result32.header["training"]["precision"] == "float32"
    w32, w16 = load_file(str(path32)), load_file(str(out))
    assert all(t.dtype == torch.float32 for t in w16.values() if t.is_floating_point())
    assert any(not torch.equal(w32[k], w16[k]) for k in w32 if w32[k].is_floating_point())  # autocast did run
    assert abs(result16.validation.oa - result32.validation.oa) <= 0.1
    again = api.train(layers, str(shared_scene.labels), str(tmp_path / "f32.safetensors"), **fast_options, precision="float32")
    w = load_file(str(tmp_path / "f32.safetensors"))
    assert all(torch.equal(w32[k], w[k]) for k in w32)  # float32: bit-identical to the default run
    assert again.validation.oa == result32.validation.oa


def test_float16_training_scales_the_loss(random_model, monkeypatch):
    """float16 autocast (CUDA's; torch runs it on the CPU too) goes through the loss scaler and
    still learns a separable toy problem."""
    from rsvl.backend.runtime.jobs import Job
    from rsvl.backend.training.loop import TrainSettings, train

    model = random_model({"hsi": 4}, 5, n_classes=2)
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 64)
    hsi = (rng.standard_normal((128, 4, 5, 5)) + (2 * y - 1)[:, None, None, None] * 1.5).astype(np.float32)
    settings = TrainSettings(epochs=15, batch_size=32, learning_rate=3e-3, validation_fraction=0.25, seed=0,
                             precision="float16")
    scaled = []
    scale = torch.amp.GradScaler.scale
    monkeypatch.setattr(torch.amp.GradScaler, "scale", lambda self, loss: scaled.append(loss.dtype) or scale(self, loss))
    outcome = train(model, {"hsi": hsi}, y, settings, torch.device("cpu"), Job())
    assert scaled and set(scaled) == {torch.float32}  # every step scaled; the loss itself in float32
    assert outcome.history[-1]["val_oa"] >= 0.9
    # a step the scaler skips (gradients overflowed at its first scale) moves neither the one-cycle
    # schedule nor the weight average: torch would warn of a schedule stepped before the optimiser
    import warnings

    model = random_model({"hsi": 4}, 5, n_classes=2)
    settings = TrainSettings(epochs=3, batch_size=32, learning_rate=3e-3, validation_fraction=0.0, seed=0,
                             precision="float16", schedule="one-cycle", ema=0.9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(model, {"hsi": hsi * 1e4}, y, settings, torch.device("cpu"), Job())
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]


def test_fewshot_and_checkpoint_explorer_in_bfloat16(fewshot_scene, rgb_checkpoint, tmp_path):
    """The few-shot paths (training the head on the tower's features, classifying) and the
    Explore panel's checkpoint path take PRECISION: bfloat16 close to float32, views cached apart."""
    from rsvl.backend.io.raster import LayerSpec
    from rsvl.backend.mapping.explore import EmbeddingCache

    root, preset, _ = fewshot_scene
    layers = [LayerSpec(str(root / "rgb.tif"), "ms")]
    maps = {}
    for precision in ("float32", "bfloat16"):
        res = api.train_fewshot(str(root / "clip.pt"), layers, str(root / "labels.tif"),
                                str(tmp_path / f"fs_{precision}.safetensors"), preset=preset, tile_size=32, stride=16,
                                device="cpu", epochs=0, validation_fraction=0.0, precision=precision)
        api.classify(res.model_path, layers, str(tmp_path / f"fs_{precision}.tif"),
                     similarity=str(tmp_path / f"fs_{precision}_sim.tif"), device="cpu", precision=precision)
        with rasterio.open(tmp_path / f"fs_{precision}_sim.tif") as ds:
            maps[precision] = ds.read()
    assert np.array_equal(np.isnan(maps["float32"]), np.isnan(maps["bfloat16"]))
    assert 0 < np.nanmax(np.abs(maps["float32"] - maps["bfloat16"])) < 0.05
    ckpt, preset, scene, _arch = rgb_checkpoint
    cache, scores = EmbeddingCache(), {}
    for precision in ("float32", "bfloat16"):
        with api.open_explorer(ckpt, [LayerSpec(scene, "ms")], preset=preset, tile_size=32, stride=16,
                               device="cpu", precision=precision, cache=cache) as ex:
            assert ex.precision == precision
            scores[precision] = ex.prompts(ex.embed(), ["water"])
    assert len(cache.views) == 2
    assert np.nanmax(np.abs(scores["float32"] - scores["bfloat16"])) < 0.05


def test_allocator_thresholds(monkeypatch):
    """tune_allocator sets glibc's thresholds once (the engines' windows come from the heap),
    leaves a user's MALLOC_*_ or GLIBC_TUNABLES malloc settings alone unless forced (Dask
    workers), calls mallopt with glibc's parameter numbers, and tries only once per process
    where mallopt refuses."""
    import ctypes

    from rsvl.backend.runtime import allocator as A

    calls, answer = [], [1]

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return answer[0]

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    monkeypatch.setattr(A, "_DONE", [None])
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    assert A.tune_allocator() is False and calls == []
    assert A.tune_allocator(force=True) is True
    assert calls == [(-3, 32 * 2**20), (-1, 64 * 2**20)]
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=1048576")
    monkeypatch.setattr(A, "_DONE", [None])
    calls.clear()
    assert A.tune_allocator() is False and calls == []
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setattr(A, "_DONE", [None])
    assert A.tune_allocator() is True and A.tune_allocator() is True and len(calls) == 2  # once per process
    monkeypatch.setattr(A, "_DONE", [None])
    calls.clear()
    answer[0] = 0  # a C library whose mallopt refuses: tried once, not on every engine
    assert A.tune_allocator() is False and A.tune_allocator() is False and len(calls) == 1


def test_float32_on_cuda_turns_tf32_off(monkeypatch):
    """On a CUDA device rsvl makes float32 mean float32 (TF32 off for matmuls and cuDNN
    convolutions; flags only, no GPU needed) before the precision check, with the flags other
    code still reads; a CPU run leaves them alone."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    try:
        matmul.allow_tf32 = cudnn.allow_tf32 = True
        P.exact_float32_on_cuda("cpu")
        P.choose("float32", "cpu")
        assert matmul.allow_tf32 and cudnn.allow_tf32
        seen = []
        monkeypatch.delenv("RSVL_PRECISION", raising=False)
        monkeypatch.setattr(P, "native_bfloat16", lambda device: (True, "a GPU"))
        P.choose("auto", "cuda", check=lambda dtype: (seen.append((matmul.allow_tf32, cudnn.allow_tf32)), (True, ""))[1])
        assert seen == [(False, False)]  # the check's float32 reference is float32
        assert not matmul.allow_tf32 and not cudnn.allow_tf32  # and still readable
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved
