"""MEMBERS: deep ensembles of rsvl models (mmlgnet.Ensemble) — the engines give the
members' mean similarity exactly, training writes one model file whose first member is
the single model of the same seed, and what cannot take an ensemble says so."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import rasterio
import torch

from rsvl.backend import api
from rsvl.backend.errors import InputError
from rsvl.backend.io.raster import LayerSpec

FAST = dict(patch_size=5, batch_size=64, learning_rate=3e-3, device="cpu")


def test_ensemble_similarity_is_the_mean_of_its_members_on_every_path(random_model):
    from rsvl.backend.mapping.inference import embed_patches
    from rsvl.backend.models.dense import EnsembleEmbedder, dense_embedder
    from rsvl.backend.models.mmlgnet import Ensemble

    bands = {"hsi": 6, "lidar": 1}
    members = [random_model(bands, 7, seed=s, pixel_channels=(8,)) for s in (1, 2, 3)]
    ensemble = Ensemble(members).eval()
    rng = np.random.default_rng(0)
    norm = {m: rng.normal(size=(n, 20 + 6, 18 + 6)).astype(np.float32) for m, n in bands.items()}
    text = torch.nn.functional.normalize(torch.randn(4, 24), dim=1)
    engine = dense_embedder(ensemble)
    assert isinstance(engine, EnsembleEmbedder)
    dense = engine.similarity(norm, ensemble.text_space(text))
    each = torch.stack([dense_embedder(m).similarity(norm, text) for m in members]).mean(0)
    assert dense.shape == (4, 20, 18)
    torch.testing.assert_close(dense, each, atol=2e-6, rtol=0)
    # The per-patch definition: unit vectors of M·D values, whose dot product with the
    # repeated text is the members' mean cosine similarity.
    emb = embed_patches(ensemble, norm, 3, "cpu")
    assert emb.shape == (3 * 24, 20, 18)
    torch.testing.assert_close(emb.norm(dim=0), torch.ones(20, 18), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.einsum("dhw,kd->khw", emb, ensemble.text_space(text)), each, atol=2e-6, rtol=0)
    with torch.no_grad():
        ref = ensemble.embed_dense({m: torch.from_numpy(a)[None] for m, a in norm.items()})[0]
    torch.testing.assert_close(ref, emb, atol=2e-6, rtol=0)
    with pytest.raises(ValueError, match="one architecture"):
        Ensemble([members[0], random_model(bands, 5, seed=4)])


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory, helpers):
    root = tmp_path_factory.mktemp("ensemble")
    scene = helpers.make_scene(root / "scene", size=32, seed=5)
    layers = [LayerSpec(str(scene.paths[m]), m) for m in ("hsi", "lidar")]
    res = api.train(layers, str(scene.labels), str(root / "ens.safetensors"), epochs=3, validation_fraction=0.3,
                    members=2, seed=4, **FAST)
    return scene, layers, root, res


def test_members_train_one_model_file_classified_as_the_members_mean(ensemble_run):
    from rsvl.backend.models.mmlgnet import Ensemble
    from rsvl.backend.models.modelfile import load_model, read_header, save_model

    scene, layers, root, res = ensemble_run
    header = read_header(res.model_path)
    assert header.members == 2 and header.format_version() == 3
    t = header.training
    assert t["members"] == 2 and t["member_seeds"] == [4, 1004] and len(t["member_ema"]) == 2
    assert res.validation is not None and 0 < t["n_val"] < t["n_samples"]
    model, _ = load_model(res.model_path)
    assert isinstance(model, Ensemble) and len(model.members) == 2
    # The first member is exactly the single model of the same seed (CPU training is deterministic).
    single = api.train(layers, str(scene.labels), str(root / "single.safetensors"), epochs=3,
                       validation_fraction=0.3, seed=4, **FAST)
    one, _ = load_model(single.model_path)
    for key, value in one.state_dict().items():
        torch.testing.assert_close(model.members[0].state_dict()[key], value, atol=0, rtol=0)
    assert not torch.equal(model.members[0].fusion.weight, model.members[1].fusion.weight)
    # Classification: the similarity raster is the mean of the members' own similarity rasters.
    out = api.classify(res.model_path, layers, str(root / "ens.tif"), similarity=str(root / "ens_sim.tif"),
                       device="cpu")
    sims = []
    for k, member in enumerate(model.members):
        path = str(root / f"member{k}.safetensors")
        save_model(path, member, dataclasses.replace(header, members=1))
        api.classify(path, layers, str(root / f"m{k}.tif"), similarity=str(root / f"m{k}_sim.tif"), device="cpu")
        with rasterio.open(root / f"m{k}_sim.tif") as ds:
            sims.append(ds.read())
    with rasterio.open(root / "ens_sim.tif") as ds:
        ens = ds.read()
    np.testing.assert_allclose(ens, np.mean(sims, axis=0), atol=2e-6)
    with rasterio.open(out.output) as ds:
        pred = ds.read(1)
    codes = np.array([c.code for c in header.classes])
    valid = ~np.isnan(ens).any(0)
    assert (pred[valid] == codes[ens[:, valid].argmax(0)]).all()
    held = scene.held_out()
    assert (pred[held] == scene.truth[held]).mean() > 0.6  # four classes: chance is about 0.25
    # Open-vocabulary queries go through the same engine.
    prompts = ["water", "forest"]
    api.query(res.model_path, layers, prompts, output_similarity=str(root / "q.tif"), device="cpu")
    each = []
    for k in range(2):
        api.query(str(root / f"member{k}.safetensors"), layers, prompts, output_similarity=str(root / f"q{k}.tif"),
                  device="cpu")
        with rasterio.open(root / f"q{k}.tif") as ds:
            each.append(ds.read())
    with rasterio.open(root / "q.tif") as ds:
        assert ds.count == 2
        np.testing.assert_allclose(ds.read(), np.mean(each, axis=0), atol=2e-6)


def test_members_is_checked_and_a_distillation_teacher_must_be_one_model(ensemble_run, tmp_path):
    from rsvl.backend.training.distill import distill

    scene, layers, root, res = ensemble_run
    with pytest.raises(InputError, match="MEMBERS must be at least 1"):
        api.train(layers, str(scene.labels), str(tmp_path / "m.safetensors"), members=0, **FAST)
    with pytest.raises(InputError, match="TEACHER 'ens.safetensors' is an ensemble of 2 models"):
        distill(res.model_path, layers, [layers[1]], str(tmp_path / "student.safetensors"), device="cpu")
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "student.safetensors").exists()
