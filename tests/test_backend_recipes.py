"""The recipe registry (issue 11): every recipe trains on a synthetic multi-sensor scene
(HSI + LiDAR + SAR + MS) well above chance, writes the same model format and is served by
the dense engine; spectral-spatial's schedule, refit and defaults."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import rasterio

from rsvl.backend import api
from rsvl.backend.errors import InputError
from rsvl.backend.io.raster import LayerSpec
from rsvl.backend.training.recipes import DEFAULT_RECIPE, RECIPES, get_recipe

FAST = dict(patch_size=5, batch_size=64, seed=0, device="cpu")


def test_registry_names_defaults_and_errors():
    assert DEFAULT_RECIPE == "spectral-spatial" and list(RECIPES) == ["spectral-spatial", "mmlgnet", "band-groups"]
    assert get_recipe(None).name == DEFAULT_RECIPE
    assert get_recipe("mmlgnet").settings["learning_rate"] == 1e-4  # the paper's
    for recipe in RECIPES.values():
        assert recipe.summary and recipe.dense and recipe.settings["schedule"] in ("early-stopping", "one-cycle")
    with pytest.raises(InputError, match="RECIPE must be one of spectral-spatial, mmlgnet, band-groups"):
        get_recipe("random-forest")
    # The plugin lists recipes when QGIS loads it: the registry must not import torch.
    code = "import sys, rsvl.backend.training.recipes as r; print(sorted(r.RECIPES), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")


@pytest.fixture(scope="module")
def multi(tmp_path_factory, helpers):
    root = tmp_path_factory.mktemp("recipes")
    scene = helpers.make_scene(root / "scene", size=36, seed=3)
    layers = [LayerSpec(str(scene.paths[m]), m) for m in ("hsi", "lidar", "sar", "ms")]
    return scene, layers, root


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_every_recipe_trains_well_above_chance_and_classifies_densely(recipe, multi):
    from rsvl.backend.models.modelfile import load_model, read_header

    scene, layers, root = multi
    epochs = 8 if recipe == "spectral-spatial" else 20
    res = api.train(layers, str(scene.labels), str(root / f"{recipe}.safetensors"), recipe=recipe, epochs=epochs,
                    learning_rate=3e-3, **FAST)
    header = read_header(res.model_path)
    assert header.training["recipe"] == recipe
    model, _ = load_model(res.model_path)
    assert (model.pixel is not None) == (recipe == "spectral-spatial")
    assert bool(header.config.groups) == (recipe == "band-groups")
    out = api.classify(res.model_path, layers, str(root / f"{recipe}.tif"), device="cpu")
    assert out.method == "dense"
    with rasterio.open(out.output) as ds:
        pred = ds.read(1)
    held = scene.held_out()
    acc = (pred[held] == scene.truth[held]).mean()
    assert acc > 0.8, (recipe, acc)  # four classes: chance is about 0.25


def test_spectral_spatial_refits_on_every_label_and_keeps_the_validation_figures(multi):
    from rsvl.backend.models.modelfile import read_header

    scene, layers, root = multi
    res = api.train(layers, str(scene.labels), str(root / "ss.safetensors"), epochs=6, validation_fraction=0.3,
                    **FAST)
    t = read_header(res.model_path).training
    assert t["schedule"] == "one-cycle" and t["refit"] is True
    assert t["n_train"] == t["n_samples"] == res.n_train and 0 < t["n_val"] < t["n_samples"]
    assert res.validation is not None and res.epochs_run == 6 == len(res.history)  # EPOCHS given: exactly
    rates = [h["learning_rate"] for h in res.history]
    # One cycle, peak 1e-3: the 10 % warm-up ends within the first epoch, then the rate decays towards zero.
    assert rates[0] <= 1e-3 and all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] < 2e-2 * 1e-3
    assert "val_oa" in res.history[-1]
    with rasterio.open(scene.labels) as ds:
        labelled = int((ds.read(1) > 0).sum())
    assert t["n_samples"] == labelled
    # Without a validation split there is no first fit to refit from.
    res = api.train(layers, str(scene.labels), str(root / "ss0.safetensors"), epochs=4, validation_fraction=0,
                    **FAST)
    t = read_header(res.model_path).training
    assert t["refit"] is False and res.validation is None and t["n_train"] == t["n_samples"]


def test_the_validation_split_chooses_the_weight_average_and_the_refit_keeps_it(multi, monkeypatch):
    """spectral-spatial keeps a weight average per decay (0.995, 0.98) in the validation run;
    the choice follows :func:`choose_average` (0.98 only when its validation OA beats
    0.995's by more than a standard error, tested on its own below), and the refit trains
    only the chosen one. Which one wins depends on the run, so the choice is forced to the
    non-default one here to see the refit keep it."""
    from rsvl.backend.models.modelfile import read_header
    from rsvl.backend.training import loop as training

    scene, layers, root = multi
    calls, ruled = [], []
    real, real_choose = training._one_cycle_run, training.choose_average

    def spy(*args, **kwargs):
        calls.append(list(kwargs["decays"]))
        return real(*args, **kwargs)

    def choose(decays, scores, n_val):
        ruled.append(real_choose(decays, scores, n_val))
        return 0.98

    monkeypatch.setattr(training, "_one_cycle_run", spy)
    monkeypatch.setattr(training, "choose_average", choose)
    res = api.train(layers, str(scene.labels), str(root / "ema.safetensors"), epochs=3, validation_fraction=0.3,
                    learning_rate=3e-3, **FAST)
    t = read_header(res.model_path).training
    assert calls[0] == [0.995, 0.98] and calls[1] == [0.98] and t["ema"] == 0.98
    scores = {float(k): v for k, v in t["ema_scores"].items()}
    assert set(scores) == {0.995, 0.98}
    oa, n_val = scores[0.995][0], t["n_val"]
    lead = scores[0.98][0] > oa + (oa * (1 - oa) / n_val) ** 0.5
    assert ruled == [0.98 if lead else 0.995], (scores, n_val)
    # The validation figures are the chosen average's.
    assert res.validation.oa == pytest.approx(scores[0.98][0], abs=1e-3)
    # Without a validation split nothing is chosen: the recipe's decay.
    calls.clear()
    res = api.train(layers, str(scene.labels), str(root / "ema0.safetensors"), epochs=2, validation_fraction=0,
                    **FAST)
    assert calls == [[0.995]] and read_header(res.model_path).training["ema_scores"] is None


def test_another_average_needs_a_standard_error_of_lead():
    from rsvl.backend.training.loop import choose_average

    # 200 validation samples at OA 0.90: one standard error is 0.0212.
    assert choose_average([0.995, 0.98], {0.995: (0.90, -0.3), 0.98: (0.92, -0.2)}, 200) == 0.995
    assert choose_average([0.995, 0.98], {0.995: (0.90, -0.3), 0.98: (0.925, -0.4)}, 200) == 0.98
    # Five validation samples: a lead of one sample is no evidence.
    assert choose_average([0.995, 0.98], {0.995: (0.6, -1.0), 0.98: (0.8, -1.0)}, 5) == 0.995
    # Among those ahead, the best OA, then the lower loss.
    three = {0.995: (0.80, -0.5), 0.98: (0.95, -0.3), 0.9: (0.95, -0.1)}
    assert choose_average([0.995, 0.98, 0.9], three, 500) == 0.9


def test_the_default_length_has_a_minimum_of_steps(multi, monkeypatch):
    """With few labels an epoch is one step; the recipe's default 60 epochs would be 60 steps,
    so the default schedule runs at least 400 (explicit EPOCHS are taken as they are, above)."""
    from rsvl.backend.training import loop as training

    scene, layers, root = multi
    seen = {}
    real = training._one_cycle_run

    def spy(model, patches, y, settings, *args, **kwargs):
        seen["min_steps"], seen["epochs"] = settings.min_steps, settings.epochs
        return real(model, patches, y, settings, *args, **kwargs)

    monkeypatch.setattr(training, "_one_cycle_run", spy)
    labels = root / "few.tif"
    with rasterio.open(scene.labels) as ds:
        codes, profile = ds.read(1), ds.profile
    few = np.zeros_like(codes)
    for c in (1, 2, 3, 4):
        few.flat[np.flatnonzero(codes.ravel() == c)[:5]] = c
    with rasterio.open(labels, "w", **profile) as dst:
        dst.write(few, 1)
    res = api.train(layers, str(labels), str(root / "few.safetensors"), validation_fraction=0, **FAST)
    assert seen == {"min_steps": 400, "epochs": 60}
    assert res.epochs_run == 400  # 20 samples: one step per epoch


def test_model_format_version_follows_the_architecture(random_model, tmp_path):
    """Pixel-branch models are format v2 (older rsvl versions ask to be updated); MMLGNet
    files stay v1, readable by rsvl 0.1."""
    import json

    from safetensors import safe_open

    from rsvl.backend.io.labels import ClassInfo
    from rsvl.backend.io.raster import BandStats
    from rsvl.backend.models.modelfile import ModelHeader, load_model, save_model

    for pixel, expected in (((), 1), ((8,), 2)):
        model = random_model({"ms": 4}, 5, n_classes=2, pixel_channels=pixel)
        header = ModelHeader(config=model.config, band_names={"ms": ["a", "b", "c", "d"]},
                             stats={"ms": BandStats([0.0] * 4, [1.0] * 4)},
                             classes=[ClassInfo(1, "x", (1, 2, 3)), ClassInfo(2, "y", (3, 2, 1))],
                             prompt_template="{}", text_encoder="t")
        path = tmp_path / f"m{expected}.safetensors"
        save_model(str(path), model, header)
        with safe_open(str(path), framework="pt") as f:
            assert json.loads(f.metadata()["rsvl"])["format_version"] == expected
        loaded, _ = load_model(str(path))
        assert (loaded.pixel is not None) == bool(pixel)


def test_classes_with_few_labels_are_warned_about(multi, caplog, helpers):
    """A class with one or two labelled pixels is mapped from guesswork on other dates
    (README, accuracy): training says which classes, how many pixels, and what to do."""
    scene, layers, root = multi
    with rasterio.open(scene.labels) as ds:
        few = ds.read(1)
    few.flat[np.flatnonzero(few.ravel() == 2)[2:]] = 0  # class 2 keeps two pixels
    labels = helpers.write_labels(root / "two.tif", few, scene.transform)
    with caplog.at_level("WARNING", logger="rsvl"):
        res = api.train(layers, str(labels), str(root / "two.safetensors"), epochs=1, validation_fraction=0, **FAST)
    name = [c.name for c in res.classes if c.code == 2][0]
    warned = [r.getMessage() for r in caplog.records if "labelled pixel(s) only" in r.getMessage()]
    assert len(warned) == 1 and f"{name!r} (2)" in warned[0] and "Label at least 5" in warned[0], warned
    assert all(repr(c.name) not in warned[0] for c in res.classes if c.code != 2)
    caplog.clear()
    with caplog.at_level("WARNING", logger="rsvl"):
        api.train(layers, str(scene.labels), str(root / "all.safetensors"), epochs=1, validation_fraction=0, **FAST)
    assert not [r for r in caplog.records if "labelled pixel(s) only" in r.getMessage()]
