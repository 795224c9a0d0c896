"""Data-parallel training under torchrun (``train --distributed``, backend/training/ddp.py): the
ranks' batches make up the single-process batches; the gathered loss gives the
single-process gradients; a 2-process gloo run writes one valid model whose validation
accuracy matches single-process training; clear errors outside torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
OA_TOLERANCE = 0.05  # validation OA of the 2-process model vs the single-process one (same seed and settings)


def test_ranks_deal_out_the_single_process_batches():
    """Rank r's local batch i (BATCH_SIZE / N samples) and the other ranks' make up batch i
    of the epoch order, the last one padded with repeats of the first samples."""
    from rsvl.backend.training.ddp import Ranks, rank_order

    order = np.random.default_rng(0).permutation(23)
    batch, world = 8, 2
    local = [rank_order(order, Ranks(r, world, r, "cpu", "gloo")) for r in range(world)]
    assert [len(x) for x in local] == [12, 12]
    step = batch // world
    padded = np.concatenate([order, order[:1]])
    for i in range(3):
        together = np.concatenate([x[i * step:(i + 1) * step] for x in local])
        assert sorted(together) == sorted(padded[i * batch:(i + 1) * batch])


def test_batch_size_must_split_over_the_processes():
    from rsvl.backend.errors import InputError
    from rsvl.backend.training.ddp import check_batch_size

    check_batch_size(64, 2)
    with pytest.raises(InputError, match="BATCH_SIZE 63 must split evenly .* 2 processes \\(e.g. 64\\)"):
        check_batch_size(63, 2)
    with pytest.raises(InputError, match="at least 2 samples per process"):
        check_batch_size(4, 4)


def test_distributed_outside_torchrun_is_a_clear_error(scene, tmp_path, monkeypatch, helpers):
    from rsvl.backend import api
    from rsvl.backend.errors import InputError
    from rsvl.backend.io.raster import LayerSpec

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(InputError, match="--distributed runs under torchrun"):
        api.train([LayerSpec(str(scene.paths["hsi"]), "hsi")], str(scene.labels), str(tmp_path / "m.safetensors"),
                  distributed=True, **helpers.fast)
    assert not (tmp_path / "m.safetensors").exists()


GRADIENT_SCRIPT = r'''
import sys
import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, sys.argv[2])
from conftest import random_model
from rsvl.backend.training import ddp
from rsvl.backend.models.mmlgnet import supervised_contrastive_loss, symmetric_contrastive_loss
from rsvl.backend.training.loop import _batch_embedder

ranks = ddp.start("cpu")
out = {}
for loss_name in ("supervised", "clip", "mixup"):
    model = random_model({"hsi": 6, "lidar": 1}, 5, n_classes=4, embed_dim=16, seed=1)  # eval: batch norm is affine
    rng = np.random.default_rng(0)
    patches = {"hsi": rng.standard_normal((40, 6, 5, 5), dtype=np.float32),
               "lidar": rng.standard_normal((40, 1, 5, 5), dtype=np.float32)}
    y = torch.from_numpy(rng.integers(0, 4, 40))
    order = rng.permutation(40)
    n = 16 // ranks.world_size
    b = torch.from_numpy(ddp.rank_order(order, ranks)[:n])  # this rank's part of batch 0
    net = DistributedDataParallel(_batch_embedder(model, False))
    batch = {m: torch.from_numpy(p)[b] for m, p in patches.items()}
    mix = (torch.arange(n).flip(0), torch.linspace(0.5, 1.0, n))  # each rank mixes its own samples
    if loss_name == "mixup":
        batch = {m: mix[1].view(-1, 1, 1, 1) * x + (1 - mix[1].view(-1, 1, 1, 1)) * x[mix[0]] for m, x in batch.items()}
    z, _groups = net(batch)
    z_all, y_all = ddp.gather(z), ddp.gather_plain(y[b])
    text = model.class_embeddings
    if loss_name == "clip":
        loss = symmetric_contrastive_loss(z_all, text[y_all], model.scale())
    elif loss_name == "mixup":
        loss = supervised_contrastive_loss(z_all, text[y_all], y_all, model.scale(),
                                           mix=ddp.gather_mix(mix, n, ranks.rank))
    else:
        loss = supervised_contrastive_loss(z_all, text[y_all], y_all, model.scale())
    loss.backward()
    out.update({f"{loss_name}/{n}": p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None})
    out[f"{loss_name}/loss"] = np.float64(loss.item())
if ranks.rank == 0:
    np.savez(sys.argv[1], **out)
ddp.finish()
'''


def test_two_ranks_give_the_single_process_gradients(tmp_path, random_model):
    """One step on the first global batch (16 samples, 8 per rank): the gathered loss is the
    single-process loss and DDP's averaged gradients equal the single-process gradients
    (batch norm in eval mode here, so the per-rank statistics play no part). With mixup each
    rank mixes its own samples and the gathered targets must pair each mixture with its
    partner's label in the global batch."""
    import torch

    from rsvl.backend.models.mmlgnet import supervised_contrastive_loss, symmetric_contrastive_loss
    from rsvl.backend.training import ddp

    script = tmp_path / "grads.py"
    script.write_text(GRADIENT_SCRIPT)
    res = subprocess.run([*TORCHRUN, "--nproc_per_node", "2", str(script), str(tmp_path / "grads.npz"),
                          str(Path(__file__).parent)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    ddp_grads = np.load(tmp_path / "grads.npz")
    for loss_name in ("supervised", "clip", "mixup"):
        model = random_model({"hsi": 6, "lidar": 1}, 5, n_classes=4, embed_dim=16, seed=1)
        rng = np.random.default_rng(0)
        patches = {"hsi": rng.standard_normal((40, 6, 5, 5), dtype=np.float32),
                   "lidar": rng.standard_normal((40, 1, 5, 5), dtype=np.float32)}
        y = torch.from_numpy(rng.integers(0, 4, 40))
        order = rng.permutation(40)
        b = torch.from_numpy(order[:16])  # the single-process batch 0
        batch = {m: torch.from_numpy(p)[b] for m, p in patches.items()}
        mix = None
        if loss_name == "mixup":
            # rank r's 8 samples, in rank order; sample k of rank r is mixed with its sample 7 - k
            parts = [ddp.rank_order(order, ddp.Ranks(r, 2, r, "cpu", "gloo"))[:8] for r in (0, 1)]
            b = torch.from_numpy(np.concatenate(parts))
            lam = torch.linspace(0.5, 1.0, 8).repeat(2)
            partner = torch.tensor([r * 8 + 7 - k for r in (0, 1) for k in range(8)])
            w = lam.view(-1, 1, 1, 1)
            batch = {m: w * torch.from_numpy(p)[b] + (1 - w) * torch.from_numpy(p)[b][partner]
                     for m, p in patches.items()}
            mix = (partner, lam)
        z = model.embed(batch)
        text = model.class_embeddings
        if loss_name == "clip":
            loss = symmetric_contrastive_loss(z, text[y[b]], model.scale())
        else:
            loss = supervised_contrastive_loss(z, text[y[b]], y[b], model.scale(), mix=mix)
        loss.backward()
        assert abs(float(ddp_grads[f"{loss_name}/loss"]) - loss.item()) < 1e-5
        grads = {n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None}
        assert sorted(grads) == sorted(k.split("/", 1)[1] for k in ddp_grads.files
                                       if k.startswith(f"{loss_name}/") and not k.endswith("/loss"))
        for name, g in grads.items():
            np.testing.assert_allclose(ddp_grads[f"{loss_name}/{name}"], g, rtol=1e-4, atol=1e-6, err_msg=name)
        assert np.abs(grads["logit_scale"]).max() > 0  # the temperature's gradient is not counted twice


def test_torchrun_two_gloo_processes_write_one_model_as_good_as_one_process(trained_model, shared_scene, tmp_path,
                                                                             helpers):
    """torchrun, 2 processes, gloo: one model file (rank 0's) and one report, a valid model
    that classifies the scene, and validation OA within OA_TOLERANCE of the single-process
    model trained with the same seed and settings (trained_model)."""
    from rsvl.backend import api
    from rsvl.backend.models.modelfile import read_header

    _path, single, layers = trained_model
    f = helpers.fast
    out = tmp_path / "out"
    res = subprocess.run(
        [*TORCHRUN, "--nproc_per_node", "2", "-m", "rsvl.backend", "train", "--hsi", shared_scene.paths["hsi"],
         "--lidar", shared_scene.paths["lidar"], "--labels", shared_scene.labels, "-o", out / "model.safetensors",
         "--report", out / "report.html", "--patch-size", str(f["patch_size"]), "--epochs", str(f["epochs"]),
         "--batch-size", str(f["batch_size"]), "--learning-rate", str(f["learning_rate"]),
         "--patience", str(f["patience"]), "--seed", str(f["seed"]), "--device", "cpu", "--distributed"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("model: ") == 1  # rank 0 reports for both
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "report.html"]
    header = read_header(str(out / "model.safetensors"))
    training = header.training
    assert training["processes"] == 2 and training["batch_size"] == f["batch_size"]
    assert training["n_val"] == single.n_val and training["n_samples"] == single.header["training"]["n_samples"]
    assert training["recipe"] == single.header["training"]["recipe"] and training["refit"] is True
    ddp_oa = training["validation"]["oa"]
    assert ddp_oa >= 0.8
    assert abs(ddp_oa - single.validation.oa) <= OA_TOLERANCE, (ddp_oa, single.validation.oa)
    result = api.classify(str(out / "model.safetensors"), layers, str(tmp_path / "classes.tif"), device="cpu")
    import rasterio

    with rasterio.open(result.output) as ds:
        pred = ds.read(1)
    assert (pred == shared_scene.truth).mean() >= 0.8
