"""Few-shot adaptation of a pretrained checkpoint (issue 10, item 5): zero epochs give the
zero-shot map exactly, training on labels separates what zero-shot does not, and the model
file is used by classify and query like any rsvl model."""

from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio

from rsvl.backend import api
from rsvl.backend.errors import ModelFileError
from rsvl.backend.foundation.zeroshot import zeroshot_map
from rsvl.backend.io.raster import LayerSpec


@pytest.fixture(scope="module")
def setup(fewshot_scene):
    return fewshot_scene


def _train(setup, name, **kwargs):
    root, preset, _ = setup
    return api.train_fewshot(str(root / "clip.pt"), [LayerSpec(str(root / "rgb.tif"), "ms")],
                             str(root / "labels.tif"), str(root / name), preset=preset, tile_size=32, stride=16,
                             device="cpu", **kwargs)


def test_zero_epochs_reproduce_the_zero_shot_map(setup):
    root, preset, _ = setup
    res = _train(setup, "zero.safetensors", epochs=0, validation_fraction=0.0)
    names = [c.name for c in res.classes]
    assert sorted(names) == sorted(["water", "forest", "bare soil"])  # conftest FEWSHOT_NAMES
    layers = [LayerSpec(str(root / "rgb.tif"), "ms")]
    api.classify(res.model_path, layers, str(root / "fewshot0.tif"), similarity=str(root / "fewshot0_sim.tif"),
                 device="cpu")
    zeroshot_map(str(root / "clip.pt"), layers, names, output_similarity=str(root / "zs_sim.tif"),
                   output=str(root / "zs.tif"), preset=preset, tile_size=32, stride=16, device="cpu")
    with rasterio.open(root / "fewshot0_sim.tif") as a, rasterio.open(root / "zs_sim.tif") as b:
        np.testing.assert_allclose(a.read(), b.read(), atol=1e-5)
    with rasterio.open(root / "fewshot0.tif") as a, rasterio.open(root / "zs.tif") as b:
        fewshot, zeroshot = a.read(1), b.read(1)
    codes = np.array([0] + [c.code for c in res.classes])  # zero-shot codes 1..K are prompt positions
    np.testing.assert_array_equal(fewshot, codes[zeroshot])


def test_training_the_head_fits_the_labels_and_classify_and_query_use_it(setup):
    root, preset, truth = setup
    res = _train(setup, "adapted.safetensors", epochs=150, validation_fraction=0.3, seed=1)
    assert res.validation_oa is not None and res.validation_oa >= 0.9
    assert res.validation_oa >= res.validation_oa_zero_shot
    layers = [LayerSpec(str(root / "rgb.tif"), "ms")]
    out = api.classify(res.model_path, layers, str(root / "adapted.tif"), confidence=str(root / "conf.tif"),
                       device="cpu")
    assert out.method == "fewshot"
    with rasterio.open(out.output) as ds:
        pred = ds.read(1)
        assert ds.colormap(1)[1][:3] == (0, 0, 255)  # the labels' colours
    interior = np.zeros_like(truth, bool)
    interior[:, 8:24] = interior[:, 40:56] = interior[:, 72:88] = True  # away from the region borders
    assert (pred[interior] == truth[interior]).mean() >= 0.9
    with rasterio.open(root / "conf.tif") as ds:
        conf = ds.read(1)
    assert ((conf > 1 / 3 - 1e-6) & (conf <= 1 + 1e-6)).all()
    q = api.query(res.model_path, layers, ["a lake", "trees"], str(root / "q.tif"), device="cpu")
    with rasterio.open(q.similarity) as ds:
        assert ds.count == 2 and list(ds.descriptions) == ["a lake", "trees"]


def test_a_fewshot_model_whose_checkpoint_moved_says_so(setup, tmp_path):
    root, preset, _ = setup
    import shutil

    shutil.copy(root / "clip.pt", tmp_path / "clip.pt")
    res = api.train_fewshot(str(tmp_path / "clip.pt"), [LayerSpec(str(root / "rgb.tif"), "ms")],
                            str(root / "labels.tif"), str(tmp_path / "m.safetensors"), preset=preset, tile_size=32,
                            stride=32, epochs=1, device="cpu")
    os.remove(tmp_path / "clip.pt")
    with pytest.raises(ModelFileError, match="adapts the checkpoint .* which is not there any more"):
        api.classify(res.model_path, [LayerSpec(str(root / "rgb.tif"), "ms")], str(tmp_path / "x.tif"),
                     device="cpu")
    assert not (tmp_path / "x.tif").exists()
