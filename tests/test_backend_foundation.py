"""Pretrained vision-language checkpoints (issue 10): key layouts, loading, bands, value
scaling, template ensembles, scene tiling and stitching, multi-label, retrieval, mAP@K.
The real weights are not on our machines: tiny random open_clip models in the same file
layouts go through the real loader, and the full ViT-B-16 is built on the meta device."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from rsvl.backend.errors import InputError, ModelFileError
from rsvl.backend.foundation.bands import Preprocessor, select_bands, sentinel2_band, value_scale
from rsvl.backend.foundation.checkpoint import build_model, detect_preset, preset_state, read_checkpoint
from rsvl.backend.foundation.model import FoundationModel, fill_template
from rsvl.backend.foundation.presets import (
    CLIP_MEAN,
    CLIP_STD,
    MSCLIP_BANDS,
    MSCLIP_MEAN,
    MSCLIP_STD,
    MSCLIP_TEMPLATES,
    PRESETS,
    S2_L1C,
    S2_L2A,
    get_preset,
)
from rsvl.backend.foundation.retrieval import average_precision_at_k, mean_average_precision_at_k, retrieve
from rsvl.backend.foundation.zeroshot import multi_label, zeroshot_map
from rsvl.backend.io.raster import LayerSpec
from rsvl.backend.io.windows import WindowScores, check_tiling, window_starts

TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
PREFIXES = ("clip_base_model.model.", "image_encoder.model.", "text_encoder.model.")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-arch")
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY}))
    return path


@pytest.fixture(scope="module")
def tiny_rgb(tiny_dir):
    """A tiny random RGB open_clip model: (preset, model)."""
    preset = get_preset(f"open_clip:local-dir:{tiny_dir}")
    torch.manual_seed(0)
    return preset, build_model(preset)


@pytest.fixture(scope="module")
def tiny_ms(tiny_dir):
    """A tiny random 10-band model with Llama3-MS-CLIP's bands, scaling and prefix."""
    preset = dataclasses.replace(PRESETS["llama3-ms-clip"], arch=f"local-dir:{tiny_dir}")
    torch.manual_seed(1)
    return preset, build_model(preset)


def test_vit_b_16_with_ten_bands_has_the_keys_the_loader_expects():
    """The released Lightning layout (three prefixes + temperature), made from the full
    ViT-B-16 on the meta device, gives exactly the preset model's keys and shapes."""
    preset = PRESETS["llama3-ms-clip"]
    expected = build_model(preset, device="meta").state_dict()
    assert tuple(expected["visual.conv1.weight"].shape) == (768, 10, 16, 16)
    released = {p + k: v for p in PREFIXES for k, v in expected.items()}
    released["temperature"] = torch.empty((), device="meta")
    assert detect_preset(released) == "llama3-ms-clip"
    kept = preset_state(released, preset)
    assert kept.keys() == expected.keys()
    assert all(kept[k].shape == expected[k].shape for k in kept)


@pytest.mark.parametrize("arch,name", [("ViT-H-14", "georsclip-vit-h-14"), ("RN50", "remoteclip-rn50"),
                                       ("ViT-B-16", "open_clip:ViT-B-16")])
def test_auto_preset_where_the_shapes_tell(arch, name):
    preset = get_preset(f"open_clip:{arch}")
    state = build_model(preset, device="meta").state_dict()
    assert detect_preset(state) == name


def test_auto_preset_asks_when_shapes_are_shared():
    state = build_model(get_preset("open_clip:ViT-B-32"), device="meta").state_dict()
    with pytest.raises(InputError, match="cannot tell .*remoteclip-vit-b-32.*georsclip-vit-b-32.*set PRESET"):
        detect_preset(state)


def _same_outputs(a, b):
    x = torch.randn(2, a.visual.conv1.in_channels, 32, 32)
    tokens = torch.randint(1, 400, (2, 77))
    with torch.no_grad():
        assert torch.equal(a.encode_image(x), b.encode_image(x))
        assert torch.equal(a.encode_text(tokens), b.encode_text(tokens))


def test_a_tiny_model_in_the_llama3_ms_clip_layout_loads_strictly(tiny_ms, tmp_path):
    preset, model = tiny_ms
    state = model.state_dict()
    released = {p + k: v.clone() for p in PREFIXES for k, v in state.items()}
    released["temperature"] = torch.tensor(0.07)
    torch.save(released, tmp_path / "Llama3_MS_CLIP_weights.pt")
    fm = FoundationModel(str(tmp_path / "Llama3_MS_CLIP_weights.pt"), preset)
    _same_outputs(fm.model, model)
    broken = {k: v for k, v in released.items() if not k.endswith("ln_post.weight")}
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ModelFileError, match="does not fit PRESET llama3-ms-clip"):
        FoundationModel(str(tmp_path / "broken.pt"), preset)


@pytest.mark.parametrize("layout", ["plain .pt", "training checkpoint", "safetensors"])
def test_a_tiny_rgb_model_loads_from_each_file_layout(tiny_rgb, tmp_path, layout):
    from safetensors.torch import save_file

    preset, model = tiny_rgb
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "model.bin"
    if layout == "plain .pt":
        torch.save(state, path)
    elif layout == "training checkpoint":
        torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}, path)
    else:
        save_file(state, str(path))
    _same_outputs(FoundationModel(str(path), preset).model, model)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_with_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"visual.conv1.weight": torch.zeros(1), "x": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ModelFileError, match="refused: it is a pickle that holds more than tensors"):
        read_checkpoint(str(tmp_path / "evil.pt"))
    assert not marker.exists()


def test_band_selection_from_l1c_l2a_descriptions_and_bands():
    ms = PRESETS["llama3-ms-clip"]
    l1c = [f"band{i}" for i in range(13)]
    assert [S2_L1C[i] for i in select_bands(l1c, ms)] == list(MSCLIP_BANDS)
    l2a = [f"x:band{i}" for i in range(12)]
    assert [S2_L2A[i] for i in select_bands(l2a, ms)] == list(MSCLIP_BANDS)
    named = ["B8A", "B2", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12", "SCL"]
    assert [named[i] for i in select_bands(named, ms)] == ["B2", "B03", "B04", "B05", "B06", "B07", "B08", "B8A",
                                                              "B11", "B12"]
    rgb = PRESETS["remoteclip-vit-b-32"]
    assert select_bands(["a", "b", "c"], rgb) == [0, 1, 2]  # an RGB raster, as it is
    assert select_bands(l1c, rgb) == [3, 2, 1]
    assert select_bands(l1c, rgb, "4,3,2") == [3, 2, 1]
    with pytest.raises(InputError, match="takes Sentinel-2 bands B02, B03, B04, B05, B06, B07, B08, B8A, B11, B12; "
                                         "the input has 4 band"):
        select_bands(["B02", "B03", "B04", "B08"], ms)
    with pytest.raises(InputError, match="BANDS names 2 band"):
        select_bands(l1c, rgb, "4,3")
    assert sentinel2_band("T32TQM_20200101T102021_B8A_20m") == "B8A"
    assert sentinel2_band("S2_b2") == "B02" and sentinel2_band("elevation") is None


def test_preprocessing_equals_a_hand_written_reference():
    rng = np.random.default_rng(0)
    dn = rng.uniform(0, 6000, (10, 5, 7)).astype(np.float32)
    valid = rng.random((5, 7)) > 0.2
    ms = Preprocessor(PRESETS["llama3-ms-clip"], scale=1.0, offset=1000.0)(dn, valid)
    for b in range(10):
        ref = (dn[b] - 1000.0 - MSCLIP_MEAN[b]) / MSCLIP_STD[b]
        np.testing.assert_allclose(ms[b][valid], ref[valid], rtol=1e-6, atol=1e-6)
    assert (ms[:, ~valid] == 0).all()
    refl = dn[:3] / 10000
    rgb = Preprocessor(PRESETS["georsclip-vit-b-32"], scale=10000.0)(refl, valid)
    for b in range(3):
        v = np.floor(np.clip(refl[b] * 10000 / 2000 * 255, 0, 255)) / 255  # bright pixels clipped, not wrapped
        ref = (v - CLIP_MEAN[b]) / CLIP_STD[b]
        np.testing.assert_allclose(rgb[b][valid], ref[valid], atol=1e-5)
    eight = Preprocessor(PRESETS["georsclip-vit-b-32"], eight_bit=True)(np.full((3, 1, 1), 255.0, np.float32),
                                                                          np.ones((1, 1), bool))
    np.testing.assert_allclose(eight[:, 0, 0], (1 - np.array(CLIP_MEAN)) / np.array(CLIP_STD), rtol=1e-6)


def test_value_scale():
    assert value_scale("auto", ["uint16"], None) == 1.0
    assert value_scale("auto", ["float32"], np.array([0.01, 0.3, 0.9])) == 10000.0
    assert value_scale("auto", ["float32"], np.array([100.0, 3000.0])) == 1.0
    assert value_scale("0.5", ["float32"], None) == 0.5
    with pytest.raises(InputError, match="VALUE_SCALE must be 'auto' or a number"):
        value_scale("lots", ["uint16"], None)


def test_template_ensemble_is_the_clip_papers_mean_of_normalised_embeddings(tiny_ms, tmp_path):
    """text_embeddings (open_clip's build_zero_shot_classifier) equals the ensemble written out:
    each filled template encoded and normalised, the mean re-normalised, per prompt."""
    preset, model = tiny_ms
    torch.save(model.state_dict(), tmp_path / "m.pt")
    fm = FoundationModel(str(tmp_path / "m.pt"), dataclasses.replace(preset, key_prefix=""))
    prompts = ["a river", "pine forest"]
    templates = list(MSCLIP_TEMPLATES[:7]) + ["an image of {}"]
    ours = fm.text_embeddings(prompts, templates)
    expected = []
    with torch.no_grad():
        for prompt in prompts:
            emb = fm.model.encode_text(fm.tokenizer([fill_template(t, prompt) for t in templates]), normalize=True)
            expected.append(emb.mean(0) / emb.mean(0).norm())
    torch.testing.assert_close(ours, torch.stack(expected).float(), atol=1e-6, rtol=1e-5)
    assert ours.shape == (2, model.text_projection.shape[1]) and not torch.allclose(ours[0], ours[1])
    assert len(MSCLIP_TEMPLATES) == 50 and all("{c}" in t for t in MSCLIP_TEMPLATES)
    with pytest.raises(InputError, match="needs {} or {c}"):
        fm.text_embeddings(prompts, ["no placeholder"])


def test_windows_end_at_the_edge():
    assert window_starts(500, 224, 112) == [0, 112, 224, 276]
    assert window_starts(224, 224, 112) == [0]
    assert window_starts(100, 224, 112) == [0]
    with pytest.raises(InputError, match="STRIDE must be between 1 and TILE_SIZE"):
        check_tiling(32, 40)


def test_stitching_means_the_windows_covering_each_pixel():
    s = WindowScores(1)
    s.add((0, 0, 4, 4), np.full((1, 1, 1), 1.0))
    s.add((0, 2, 4, 4), np.full((1, 1, 1), 3.0))
    s.add((2, 0, 4, 4), np.array([[[10.0, 20.0], [30.0, 40.0]]]))  # per-token grid: 2 x 2 cells of 2 px
    mean, count = s.stitch(0, 0, 6, 6)
    assert mean[0, 0, 0] == 1 and count[0, 0] == 1
    assert mean[0, 0, 3] == 2 and count[0, 3] == 2  # windows 1 and 2
    assert mean[0, 2, 0] == pytest.approx((1 + 10) / 2) and mean[0, 3, 1] == pytest.approx((1 + 10) / 2)
    assert mean[0, 2, 3] == pytest.approx((1 + 3 + 20) / 3)
    assert mean[0, 5, 1] == 30 and mean[0, 5, 3] == 40 and count[5, 5] == 0
    block, _ = s.stitch(2, 2, 2, 2)  # a block of the scene gives the same numbers
    np.testing.assert_array_equal(block, mean[:, 2:4, 2:4])


def test_multi_label_rule_and_map_at_k():
    scores = np.array([[0.5, 0.1], [0.3, 0.2], [0.1, 0.3]])
    np.testing.assert_array_equal(multi_label(scores), [[True, False], [False, False], [False, True]])
    # relevant at ranks 1, 3 and 6 of 6 items: AP = (1/1 + 2/3 + 3/6) / 3
    s = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    r = [True, False, True, False, False, True]
    assert average_precision_at_k(s, r, 100) == pytest.approx((1 + 2 / 3 + 3 / 6) / 3)
    assert average_precision_at_k(s, r, 2) == pytest.approx(1 / 2)  # top 2: one hit, min(2, 3) = 2
    assert mean_average_precision_at_k(np.array([s, s]), np.array([r, [False] * 6])) == pytest.approx(
        (1 + 2 / 3 + 3 / 6) / 3 / 2)


def _scene(tmp_path, values, nodata=None, descriptions=None, dtype="float32"):
    bands, h, w = values.shape
    path = tmp_path / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=bands, dtype=dtype, crs="EPSG:32633",
                       transform=from_origin(500000, 5000000, 10, 10), nodata=nodata) as dst:
        dst.write(values.astype(dtype))
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
    return str(path)


def test_zeroshot_map_stitches_a_planted_model_exactly(tiny_rgb, tmp_path, monkeypatch):
    """A planted model whose window score is the window's mean value (prompt 1) and its
    negative (prompt 2): the stitched map equals the brute-force mean over covering windows,
    nodata stays nodata, and the best-prompt and multi-label maps follow."""
    preset, model = tiny_rgb
    torch.save(model.state_dict(), tmp_path / "m.pt")
    planted = dataclasses.replace(preset, scaling="dn", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    h, w = 70, 90
    values = np.broadcast_to(np.arange(w, dtype=np.float32) / w - 0.5, (3, h, w)).copy()
    values[:, 10:14, 20:30] = -9999
    path = _scene(tmp_path, values, nodata=-9999)

    def encode(self, x, tokens=False):
        m = x[:, 0].mean(dim=(1, 2))
        return torch.stack([m, -m], dim=1)

    monkeypatch.setattr(FoundationModel, "encode", encode)
    monkeypatch.setattr(FoundationModel, "text_embeddings", lambda self, prompts, templates=None, progress=None: torch.eye(2))
    monkeypatch.setattr("rsvl.backend.foundation.model.get_preset", lambda name: planted)
    res = zeroshot_map(str(tmp_path / "m.pt"), [LayerSpec(path, "ms")], ["bright", "dark"],
                         output_similarity=str(tmp_path / "sim.tif"), output=str(tmp_path / "best.tif"),
                         preset="planted", tile_size=32, stride=16, scale="1", device="cpu")
    valid = values[0] != -9999
    expected = np.zeros((h, w))
    count = np.zeros((h, w))
    for r in window_starts(h, 32, 16):
        for c in window_starts(w, 32, 16):
            v = np.where(valid[r:r + 32, c:c + 32], values[0, r:r + 32, c:c + 32], 0)  # nodata = normalised 0
            expected[r:r + 32, c:c + 32] += v.mean()
            count[r:r + 32, c:c + 32] += 1
    expected /= count
    with rasterio.open(res.similarity) as ds:
        sim = ds.read()
        assert list(ds.descriptions) == ["bright", "dark"]
    np.testing.assert_allclose(sim[0][valid], expected[valid], atol=1e-6)
    np.testing.assert_allclose(sim[1][valid], -expected[valid], atol=1e-6)
    assert np.isnan(sim[:, ~valid]).all()
    with rasterio.open(res.output) as ds:
        best = ds.read(1)
    np.testing.assert_array_equal(best[valid], np.where(expected[valid] > -expected[valid], 1, 2))
    assert (best[~valid] == 0).all()
    ml = zeroshot_map(str(tmp_path / "m.pt"), [LayerSpec(path, "ms")], ["bright", "dark"],
                        output=str(tmp_path / "ml.tif"), multi_label_output=True, preset="planted", tile_size=32,
                        stride=32, scale="1", device="cpu")
    with rasterio.open(ml.output) as ds:
        labels = ds.read()
    assert labels.shape == (2, h, w) and (labels[:, ~valid] == 255).all()
    # STRIDE = TILE_SIZE: each pixel has exactly its window's score
    r0, c0 = window_starts(h, 32, 32)[-1], window_starts(w, 32, 32)[-1]
    window = np.where(valid[r0:, c0:], values[0, r0:, c0:], 0)
    assert labels[0, -1, -1] == (1 if window.mean() > -window.mean() else 0)


def test_zeroshot_and_retrieval_with_a_real_tiny_checkpoint(tiny_rgb, tmp_path):
    preset, model = tiny_rgb
    torch.save(model.state_dict(), tmp_path / "m.pt")
    rng = np.random.default_rng(0)
    values = rng.integers(1, 4000, (13, 80, 100)).astype(np.uint16)
    values[:, :5, :] = 0
    path = _scene(tmp_path, values, nodata=0, dtype="uint16")
    layers = [LayerSpec(path, "ms")]
    name = preset.name
    res = zeroshot_map(str(tmp_path / "m.pt"), layers, ["water", "forest", "city"], preset=name,
                         output_similarity=str(tmp_path / "sim.tif"), resolution="token", device="cpu")
    with rasterio.open(res.similarity) as ds:
        sim = ds.read()
    assert sim.shape == (3, 80, 100) and np.isnan(sim[:, :5]).all() and np.isfinite(sim[:, 5:]).all()
    assert (np.abs(sim[:, 5:]) <= 1 + 1e-5).all()
    out = retrieve(str(tmp_path / "m.pt"), layers, "water", str(tmp_path / "tiles.gpkg"), top_k=5, preset=name,
                     device="cpu")
    from osgeo import ogr

    ds = ogr.Open(str(tmp_path / "tiles.gpkg"))
    layer = ds.GetLayer(0)
    rows = [(f.GetField("rank"), f.GetField("score")) for f in layer]
    assert len(rows) == 5 and [r for r, _ in rows] == [1, 2, 3, 4, 5]
    assert [s for _, s in rows] == sorted((s for _, s in rows), reverse=True)
    assert out.ranked[0][1] == pytest.approx(rows[0][1])
