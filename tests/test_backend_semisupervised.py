"""Semi-supervised training (SEMI_SUPERVISED, ``--semi-supervised``): pseudo-labels of
unlabelled pixels from the weight average where it is confident, learnt on strongly
augmented copies (FixMatch's loss with a mean teacher)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F

from rsvl.backend import api
from rsvl.backend.errors import InputError
from rsvl.backend.io.raster import BandStats, LayerSpec
from rsvl.backend.training.loop import TrainSettings, _Stepper

BANDS = {"hsi": 6, "lidar": 1}


def _stepper(random_model, confidence: float):
    rng = np.random.default_rng(0)
    patches = {m: rng.standard_normal((12, b, 5, 5), dtype=np.float32) for m, b in BANDS.items()}
    pool = {m: rng.standard_normal((30, b, 5, 5), dtype=np.float32) for m, b in BANDS.items()}
    y = rng.integers(0, 4, 12)
    stats = {m: BandStats([1.0] * b, [0.5] * b) for m, b in BANDS.items()}
    student = random_model(BANDS, 5, n_classes=4, embed_dim=16, seed=1).eval()  # eval: batch norm is affine
    teacher = random_model(BANDS, 5, n_classes=4, embed_dim=16, seed=2).eval()
    settings = TrainSettings(unlabelled_weight=1.0, confidence=confidence, unlabelled_ratio=2, seed=3)
    stepper = _Stepper(student, settings, torch.device("cpu"), stats, None, None, patches, y, unlabelled=pool)
    stepper.teacher = teacher
    return stepper, pool, teacher


def _split_confidence(stepper, pool, teacher, n: int) -> float:
    """A threshold with half of the next ``n`` unlabelled samples drawn above it."""
    pick = torch.randint(0, 30, (n,), generator=torch.Generator().set_state(stepper.augment_generator.get_state()))
    with torch.no_grad():
        prob = torch.softmax(teacher.logits(teacher.embed({m: torch.from_numpy(p)[pick] for m, p in pool.items()})), 1)
    top = prob.max(1).values.sort().values
    return float((top[n // 2 - 1] + top[n // 2]) / 2)


def test_pseudo_labels_are_the_confident_teachers_and_the_student_sees_augmented_copies(random_model):
    stepper, pool, teacher = _stepper(random_model, confidence=0.0)
    stepper.settings.confidence = threshold = _split_confidence(stepper, pool, teacher, 8)
    state = stepper.augment_generator.get_state()
    strong, pseudo, sure = stepper._pseudo_labels(4)
    pick = torch.randint(0, 30, (8,), generator=torch.Generator().set_state(state))  # the ratio: 2 per labelled
    with torch.no_grad():
        prob = torch.softmax(teacher.logits(teacher.embed({m: torch.from_numpy(p)[pick] for m, p in pool.items()})), 1)
    assert torch.equal(pseudo, prob.argmax(1))
    assert torch.equal(sure, (prob.max(1).values >= threshold).float())
    assert sure.sum() == 4  # half confident: the threshold matters here
    raw = torch.from_numpy(pool["hsi"])[pick]
    assert strong["hsi"].shape == raw.shape and not torch.allclose(strong["hsi"], raw)  # jittered, flipped, rotated
    # elevation is not jittered: its values are the same multiset per patch, only moved around
    lidar = torch.from_numpy(pool["lidar"])[pick]
    assert torch.equal(strong["lidar"].flatten(1).sort(1).values, lidar.flatten(1).sort(1).values)
    assert stepper.pseudo == [int(sure.sum()), 8]


def test_the_unlabelled_term_is_the_masked_cross_entropy_of_the_pseudo_labels(random_model):
    b = torch.arange(4)
    plain, _pool, _teacher = _stepper(random_model, confidence=0.0)
    plain.teacher = None
    base, z_plain, _y = plain.loss(b)
    never, _pool, _teacher = _stepper(random_model, confidence=1.5)  # nobody is that sure
    loss_never, z_never, _y = never.loss(b)
    assert torch.allclose(loss_never, base) and torch.allclose(z_never, z_plain)
    some, pool, teacher = _stepper(random_model, confidence=0.0)
    some.settings.confidence = _split_confidence(some, pool, teacher, 8)
    state = some.augment_generator.get_state()
    loss, _z, _y = some.loss(b)
    again, _pool, _teacher = _stepper(random_model, confidence=some.settings.confidence)
    again.augment_generator.set_state(state)
    strong, pseudo, sure = again._pseudo_labels(4)
    model = again.model
    with torch.no_grad():
        ce = F.cross_entropy(model.logits(model.embed(strong)), pseudo, reduction="none")
    assert sure.sum() == 4
    assert torch.allclose(loss - base, (ce * sure).mean(), atol=1e-6)


@pytest.fixture(scope="module")
def few_labels(tmp_path_factory, helpers):
    root = tmp_path_factory.mktemp("semi")
    scene = helpers.make_scene(root / "scene", size=36, seed=3)
    labels = root / "few.tif"
    with rasterio.open(scene.labels) as ds:
        codes, profile = ds.read(1), ds.profile
    few = np.zeros_like(codes)
    rng = np.random.default_rng(0)
    for c in np.unique(codes[codes > 0]):
        few.flat[rng.permutation(np.flatnonzero(codes.ravel() == c))[:3]] = c
    with rasterio.open(labels, "w", **profile) as dst:
        dst.write(few, 1)
    layers = [LayerSpec(str(scene.paths[m]), m) for m in ("hsi", "lidar")]
    return scene, layers, str(labels), root


def test_semi_supervised_training_uses_the_scene_and_maps_it(few_labels):
    from rsvl.backend.models.modelfile import read_header

    scene, layers, labels, root = few_labels
    # The recipe's default length (at least 400 steps): the weight average, the teacher, needs
    # a few hundred steps to be sure of anything (the share is logged and in the header).
    kw = dict(patch_size=5, batch_size=64, validation_fraction=0, seed=0, device="cpu")
    res = api.train(layers, labels, str(root / "semi.safetensors"), semi_supervised=True, **kw)
    t = read_header(res.model_path).training
    assert t["semi_supervised"] is True and t["unlabelled_pixels"] == 36 * 36  # every pixel: a small scene
    # the teacher is sure (softmax >= 0.95) of a share of the scene; spectral mixup, in the recipe, keeps it
    # from being as sure as it was without (0.12 of draws here, 0.34 without mixup; held-out accuracy 0.999 and 1.0)
    assert 0.05 < t["pseudo_labelled"] <= 1.0
    out = api.classify(res.model_path, layers, str(root / "semi.tif"), device="cpu")
    with rasterio.open(out.output) as ds:
        pred = ds.read(1)
    with rasterio.open(labels) as ds:
        held = ds.read(1) == 0
    assert (pred[held] == scene.truth[held]).mean() > 0.8  # 3 labels per class, four classes
    plain = read_header(api.train(layers, labels, str(root / "plain.safetensors"), **kw).model_path).training
    assert plain["semi_supervised"] is False and plain["unlabelled_pixels"] == 0 and plain["pseudo_labelled"] is None


def test_semi_supervised_needs_a_recipe_with_a_weight_average(few_labels):
    _scene, layers, labels, root = few_labels
    with pytest.raises(InputError, match="SEMI_SUPERVISED needs a recipe with a weight average.*not mmlgnet"):
        api.train(layers, labels, str(root / "x.safetensors"), recipe="mmlgnet", semi_supervised=True,
                  patch_size=5, epochs=2, device="cpu")
