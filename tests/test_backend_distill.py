"""Spectral distillation (issue 11, SATtxt's recipe): an RGB-like student learns a
multispectral teacher's embeddings and classifies in the teacher's space."""

from __future__ import annotations

import rasterio

from rsvl.backend import api
from rsvl.backend.io.raster import LayerSpec
from rsvl.backend.training.distill import distill, rgb_layers


def test_the_student_moves_towards_the_teacher_and_classifies(scene_factory, tmp_path):
    scene = scene_factory("distill", size=48, modalities=("ms", "lidar"))
    ms = str(scene.paths["ms"])
    with rasterio.open(ms) as ds:
        n_bands = ds.count
    teacher_layers = [LayerSpec(ms, "ms"), LayerSpec(str(scene.paths["lidar"]), "lidar")]
    teacher = tmp_path / "teacher.safetensors"
    api.train(teacher_layers, str(scene.labels), str(teacher), patch_size=5, epochs=30, batch_size=64,
              learning_rate=3e-3, seed=0, device="cpu")
    rgb = rgb_layers(ms, [3, 2, 1], str(tmp_path / "rgb.vrt"))
    student_layers = [LayerSpec(rgb, "ms")]
    res = distill(str(teacher), teacher_layers, student_layers, str(tmp_path / "student.safetensors"),
                  samples=1500, epochs=15, batch_size=128, learning_rate=3e-3, seed=0, device="cpu")
    assert n_bands > 3
    assert res.cosine_after > res.cosine_before + 0.2, (res.cosine_before, res.cosine_after)
    assert res.cosine_after > 0.6
    out = api.classify(res.model_path, student_layers, str(tmp_path / "student.tif"), device="cpu")
    with rasterio.open(out.output) as ds:
        pred = ds.read(1)
    assert [c.name for c in out.classes] == [c.name for c in api.classify(
        str(teacher), teacher_layers, str(tmp_path / "teacher.tif"), device="cpu").classes]
    held = scene.held_out()
    assert (pred[held] == scene.truth[held]).mean() > 0.6  # classes named by the teacher, from RGB alone
    from rsvl.backend.models.modelfile import read_header

    training = read_header(res.model_path).training
    assert training["distilled_from"].endswith("teacher.safetensors") and read_header(res.model_path).method == \
        "mmlgnet-distilled"
