"""Band-group prompting (issue 11, BP-LCZ): physical groups, one branch each, group
prompts, the dense engine on grouped models, and a trained model that beats chance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch

from rsvl.backend import api
from rsvl.backend.errors import InputError
from rsvl.backend.io.raster import LayerSpec
from rsvl.backend.models.mmlgnet import MMLGNet, ModelConfig
from rsvl.backend.training.recipes.band_groups import band_groups, default_groups, group_prompts


def test_sentinel2_sar_elevation_and_hsi_groups():
    l1c = [f"x:band{i}" for i in range(13)]
    groups = dict((g, idx) for g, idx in default_groups("ms", l1c))
    assert groups == {"visible": [1, 2, 3], "red-edge": [4, 5, 6], "nir": [7, 8], "swir": [11, 12],
                      "atmosphere": [0, 9, 10]}
    named = ["B04 red", "B08 nir", "B03", "elevation?"]
    assert dict((g, i) for g, i in default_groups("ms", named)) == {"visible": [0, 2], "nir": [1], "other": [3]}
    assert default_groups("sar", ["S1 VV", "S1 VH"]) == [["vv", [0]], ["vh", [1]]]
    assert default_groups("lidar", ["dsm", "dtm"]) == [["elevation", [0, 1]]]
    assert [i for _g, i in default_groups("hsi", [str(i) for i in range(10)])] == [[0, 1], [2, 3, 4], [5, 6],
                                                                                   [7, 8, 9]]
    prompts = group_prompts({"ms": [["nir", [0]]], "lidar": [["elevation", [0]]]}, ["forest", "water"])
    assert prompts == {"ms:nir": ["the near-infrared reflectance of forest", "the near-infrared reflectance of water"],
                       "lidar:elevation": ["the elevation of forest", "the elevation of water"]}


def test_groups_from_a_json_file(tmp_path):
    path = tmp_path / "groups.json"
    path.write_text(json.dumps({"ms": {"rgb": ["B04", "B03", "B02"], "rest": [4, 5]}}))
    groups = band_groups({"ms": ["B02", "B03", "B04", "B08", "B11"], "lidar": ["dsm"]}, str(path))
    assert groups == {"ms": [["rgb", [2, 1, 0]], ["rest", [3, 4]]], "lidar": [["elevation", [0]]]}
    path.write_text(json.dumps({"ms": {"x": ["B99"]}}))
    with pytest.raises(InputError, match="BAND_GROUPS: ms has no band 'B99'"):
        band_groups({"ms": ["B02"]}, str(path))


def test_dense_engine_equals_per_patch_on_a_grouped_model():
    from rsvl.backend.data.samples import patches_at
    from rsvl.backend.models.dense import DenseEmbedder

    torch.manual_seed(0)
    config = ModelConfig(bands={"ms": 6, "lidar": 1}, embed_dim=16, patch_size=5,
                         groups={"ms": [["a", [0, 2, 4]], ["b", [1, 3]]], "lidar": [["elevation", [0]]]})
    model = MMLGNet(config, n_classes=3).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    rng = np.random.default_rng(0)
    norm = {"ms": rng.standard_normal((6, 14, 14)).astype(np.float32),
            "lidar": rng.standard_normal((1, 14, 14)).astype(np.float32)}
    dense = DenseEmbedder(model).embed({m: torch.from_numpy(a)[None] for m, a in norm.items()})[0]
    rows, cols = np.divmod(np.arange(100), 10)
    with torch.no_grad():
        patch = model.embed({m: torch.from_numpy(a) for m, a in patches_at(norm, rows, cols, 5).items()})
    torch.testing.assert_close(dense.reshape(16, -1).t(), patch, atol=2e-5, rtol=1e-4)
    assert set(model.group_heads) == {"ms:a", "ms:b", "lidar:elevation"}


def test_band_group_recipe_trains_saves_and_classifies(scene_factory, tmp_path):
    scene = scene_factory("groups", size=40, modalities=("ms", "lidar"))
    layers = [LayerSpec(str(scene.paths["ms"]), "ms"), LayerSpec(str(scene.paths["lidar"]), "lidar")]
    res = api.train(layers, str(scene.labels), str(tmp_path / "g.safetensors"), recipe="band-groups", patch_size=5,
                    epochs=25, batch_size=64, learning_rate=3e-3, seed=0, device="cpu")
    from rsvl.backend.models.modelfile import load_model

    model, header = load_model(res.model_path)
    assert header.config.groups and header.training["recipe"] == "band-groups"
    out = api.classify(res.model_path, layers, str(tmp_path / "g.tif"), device="cpu")
    with rasterio.open(out.output) as ds:
        pred = ds.read(1)
    held = scene.held_out()
    acc = (pred[held] == scene.truth[held]).mean()
    assert acc > 0.7, acc  # four classes: chance is about 0.25
    with pytest.raises(InputError, match="RECIPE must be one of"):
        api.train(layers, str(scene.labels), str(tmp_path / "x.safetensors"), recipe="nope", device="cpu")
