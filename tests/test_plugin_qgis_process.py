"""The shell face: `qgis_process` through the shim runs rsvl algorithms and the Model
Designer chain tests/data/rsvl_chain.model3 (train → classify → evaluate) headless."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio

REPO = Path(__file__).resolve().parent.parent
SHIM = REPO / ".venv" / "bin" / "qgis_process"
CHAIN = REPO / "tests" / "data" / "rsvl_chain.model3"


def qgis_process(*args, home: Path, cwd: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("QGIS_CUSTOM_CONFIG_PATH", "QGIS_OPTIONS_PATH")}
    return subprocess.run([str(SHIM), *map(str, args)], capture_output=True, text=True, timeout=600, cwd=str(cwd),
                          env={**env, "HOME": str(home)})


@pytest.fixture(scope="module")
def chain(helpers, tmp_path_factory):
    """The chain trained on 15 % of the pixels and evaluated on the other 85 %."""
    from rsvl.backend.io.labels import split_label_raster

    root = tmp_path_factory.mktemp("chain")
    scene = helpers.make_scene(root / "scene", modalities=("hsi", "lidar"))
    truth = helpers.write_labels(root / "truth.tif", scene.truth, scene.transform)
    train, test = root / "train.tif", root / "test.tif"
    split_label_raster(str(truth), 0.15, 0, str(train), str(test))
    out = root / "out"
    res = qgis_process("run", CHAIN, "--", f"hsi={scene.paths['hsi']}", f"lidar={scene.paths['lidar']}",
                       f"labels={train}", f"reference={test}", f"train:model={out / 'model.safetensors'}",
                       f"classify:classes={out / 'classes.tif'}", f"evaluate:confusion={out / 'confusion.csv'}",
                       home=root, cwd=root)
    return scene, out, res, root


def test_model3_chain_runs_headless(chain):
    scene, out, res, root = chain
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (out / "model.safetensors").exists()
    with rasterio.open(out / "classes.tif") as ds, rasterio.open(scene.paths["hsi"]) as ref:
        assert ds.crs == ref.crs and ds.transform == ref.transform
        pred = ds.read(1)
    with rasterio.open(root / "test.tif") as ds:
        test = ds.read(1)
    with rasterio.open(root / "train.tif") as ds:
        n_train = int((ds.read(1) > 0).sum())
    held_out = test > 0
    rows = list(csv.reader((out / "confusion.csv").open()))
    assert rows[0][1:5] == ["water", "forest", "buildings", "grassland"]
    # The confusion matrix counts the held-out pixels, and only them, as the map has them.
    matrix = np.array([[int(v) for v in r[1:5]] for r in rows[1:5]])
    expected = np.array([[int(((test == i) & (pred == j)).sum()) for j in range(1, 5)] for i in range(1, 5)])
    np.testing.assert_array_equal(matrix, expected)
    assert matrix.sum() == held_out.sum() == scene.truth.size - n_train
    figures = {r[0]: float(r[1]) for r in rows if r and r[0] in ("oa", "aa", "kappa", "miou")}
    assert figures["oa"] == pytest.approx((pred[held_out] == test[held_out]).mean(), abs=1e-4)
    assert figures["oa"] > 0.85 and figures["kappa"] > 0.8


@pytest.mark.slow  # three more qgis_process starts; the chain above covers the shell face by default
def test_help_and_run_classify_from_the_shell(chain, tmp_path):
    scene, out, _res, root = chain
    res = qgis_process("help", "rsvl:classify", home=root, cwd=tmp_path)
    assert res.returncode == 0
    for param in ("MODEL", "INPUT_HSI", "INPUT_LIDAR", "OUTPUT", "OUTPUT_CONFIDENCE", "TILE_SIZE", "DEVICE"):
        assert f"{param}:" in res.stdout
    res = qgis_process("run", "rsvl:classify", "--", f"MODEL={out / 'model.safetensors'}",
                       f"INPUT_HSI={scene.paths['hsi']}", f"INPUT_LIDAR={scene.paths['lidar']}", "OUTPUT=shell.tif",
                       home=root, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "shell.tif").exists() and (tmp_path / "shell.qml").exists()
    # A model that needs LiDAR refuses a call without it, naming what is missing.
    res = qgis_process("run", "rsvl:classify", "--", f"MODEL={out / 'model.safetensors'}",
                       f"INPUT_HSI={scene.paths['hsi']}", "OUTPUT=bad.tif", home=root, cwd=tmp_path)
    assert res.returncode != 0 and "lidar" in (res.stdout + res.stderr)
    assert not (tmp_path / "bad.tif").exists()


def test_query_and_retrieve_with_a_pretrained_checkpoint_from_the_shell(tmp_path):
    """A tiny random open_clip checkpoint (custom architecture directory, PRESET
    open_clip:local-dir:DIR) maps a 13-band scene from text and retrieves its top tiles."""
    import json

    import torch
    from osgeo import ogr
    from rasterio.transform import from_origin

    from rsvl.backend.foundation.checkpoint import build_model
    from rsvl.backend.foundation.presets import get_preset

    arch = tmp_path / "arch"
    arch.mkdir()
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16,
                                           "head_width": 32},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (arch / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    preset = f"open_clip:local-dir:{arch}"
    torch.manual_seed(0)
    torch.save({"state_dict": build_model(get_preset(preset)).state_dict()}, tmp_path / "tiny clip.pt")
    rng = np.random.default_rng(0)
    with rasterio.open(tmp_path / "s2.tif", "w", driver="GTiff", width=96, height=64, count=13, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10), nodata=0) as dst:
        dst.write(rng.integers(1, 5000, (13, 64, 96)).astype(np.uint16))
    res = qgis_process("run", "rsvl:query", "--", f"MODEL={tmp_path / 'tiny clip.pt'}", f"PRESET={preset}",
                       f"INPUT_MS={tmp_path / 's2.tif'}", "PROMPTS=water\nforest\ncity",
                       "OUTPUT_SIMILARITY=sim.tif", "OUTPUT=best.tif", "RESOLUTION=token", "DEVICE=cpu",
                       home=tmp_path, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    with rasterio.open(tmp_path / "sim.tif") as ds:
        assert ds.count == 3 and list(ds.descriptions) == ["water", "forest", "city"]
        assert np.isfinite(ds.read()).all()
    with rasterio.open(tmp_path / "best.tif") as ds:
        assert set(np.unique(ds.read(1))) <= {1, 2, 3}
    res = qgis_process("run", "rsvl:retrieve", "--", f"MODEL={tmp_path / 'tiny clip.pt'}", f"PRESET={preset}",
                       f"INPUT_MS={tmp_path / 's2.tif'}", "QUERY=greenhouses", "TOP_K=3", "OUTPUT=tiles.gpkg",
                       "DEVICE=cpu", home=tmp_path, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ds = ogr.Open(str(tmp_path / "tiles.gpkg"))  # kept: its layer dies with it
    assert [f.GetField("rank") for f in ds.GetLayer(0)] == [1, 2, 3]


@pytest.mark.slow  # rsvl:pretrain through processing.run is in the default suite
def test_pretrain_from_the_shell(helpers, tmp_path):
    scene = helpers.make_scene(tmp_path / "scene", size=32, modalities=("hsi", "lidar"))
    res = qgis_process("run", "rsvl:pretrain", "--", f"INPUT_HSI={scene.paths['hsi']}",
                       f"INPUT_LIDAR={scene.paths['lidar']}", "PATCH_SIZE=5", "SAMPLES=300", "EPOCHS=2",
                       "BATCH_SIZE=64", "DEVICE=cpu", "OUTPUT=enc.safetensors", home=tmp_path, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (tmp_path / "enc.safetensors").exists() and "FINAL_LOSS" in res.stdout
    # … then rsvl:train with a RECIPE (1: mmlgnet) fine-tunes from it
    res = qgis_process("run", "rsvl:train", "--", f"INPUT_HSI={scene.paths['hsi']}",
                       f"INPUT_LIDAR={scene.paths['lidar']}", f"TRAINING={scene.labels}", "PATCH_SIZE=5", "EPOCHS=3",
                       "BATCH_SIZE=64", "DEVICE=cpu", "RECIPE=mmlgnet", "PRETRAINED=enc.safetensors",
                       "OUTPUT_MODEL=m.safetensors", home=tmp_path, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    from rsvl.backend.models.modelfile import read_header

    training = read_header(str(tmp_path / "m.safetensors")).training
    assert training["recipe"] == "mmlgnet" and training["pretrained"] == str(tmp_path / "enc.safetensors")


@pytest.mark.slow  # two qgis_process runs at once
def test_two_qgis_process_runs_on_the_same_input_do_not_disturb_each_other(chain, tmp_path):
    scene, out, _res, root = chain
    env = {k: v for k, v in os.environ.items() if k not in ("QGIS_CUSTOM_CONFIG_PATH", "QGIS_OPTIONS_PATH")}
    procs = [subprocess.Popen([str(SHIM), "run", "rsvl:classify", "--", f"MODEL={out / 'model.safetensors'}",
                               f"INPUT_HSI={scene.paths['hsi']}", f"INPUT_LIDAR={scene.paths['lidar']}",
                               f"OUTPUT=c{i}.tif", "OUTPUT_CONFIDENCE=" + f"p{i}.tif"], cwd=str(tmp_path),
                              env={**env, "HOME": str(root)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stdout[-2000:] + stderr[-2000:]
    with rasterio.open(tmp_path / "c0.tif") as a, rasterio.open(tmp_path / "c1.tif") as b, \
            rasterio.open(out / "classes.tif") as ref:
        assert np.array_equal(a.read(), b.read()) and np.array_equal(a.read(), ref.read())
    with rasterio.open(tmp_path / "p0.tif") as a, rasterio.open(tmp_path / "p1.tif") as b:
        assert np.array_equal(a.read(), b.read())
