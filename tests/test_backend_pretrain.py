"""Self-supervised multimodal Siamese pretraining (issue 11): stop-gradient, the loss
falls on unlabelled layers, and fine-tuning starts from the pretrained encoders."""

from __future__ import annotations

import pytest
import torch

from rsvl.backend import api
from rsvl.backend.errors import InputError
from rsvl.backend.io.raster import LayerSpec
from rsvl.backend.training.pretrain import pretrain, simsiam_loss


def test_stop_gradient_stops_gradients():
    p = torch.randn(8, 16, requires_grad=True)
    z = torch.randn(8, 16, requires_grad=True)
    simsiam_loss(p, z).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None  # the target branch gets nothing
    w = torch.nn.Linear(16, 16)
    target = w(torch.randn(8, 16))
    simsiam_loss(torch.randn(8, 16, requires_grad=True), target).backward()
    assert w.weight.grad is None


def test_pretrain_then_fine_tune_starts_from_the_file(shared_scene, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from rsvl.backend.training import loop as training

    layers = [LayerSpec(str(shared_scene.paths["hsi"]), "hsi"), LayerSpec(str(shared_scene.paths["lidar"]), "lidar")]
    res = pretrain(layers, str(tmp_path / "enc.safetensors"), patch_size=5, samples=800, epochs=6, batch_size=64,
                   seed=0, device="cpu")
    assert res.history[-1]["loss"] < res.history[0]["loss"]  # SimSiam's loss falls (towards -1)
    saved = load_file(str(tmp_path / "enc.safetensors"))
    seen = {}
    original = training.train

    def spy(model, *args, **kwargs):
        seen.update({f"encoders.{k}": v.clone() for k, v in model.encoders.state_dict().items()})
        return original(model, *args, **kwargs)

    monkeypatch.setattr(training, "train", spy)
    out = api.train(layers, str(shared_scene.labels), str(tmp_path / "m.safetensors"), patch_size=5, epochs=5,
                    batch_size=64, learning_rate=3e-3, seed=0, device="cpu", pretrained=str(tmp_path / "enc.safetensors"))
    assert seen.keys() == saved.keys() and all(torch.equal(seen[k], saved[k]) for k in saved)
    assert out.validation.oa > 0.5
    with pytest.raises(InputError, match="does not fit: its patch size is 5, PATCH_SIZE is 7"):
        api.train(layers, str(shared_scene.labels), str(tmp_path / "x.safetensors"), patch_size=7, epochs=1,
                  device="cpu", pretrained=str(tmp_path / "enc.safetensors"))
    with pytest.raises(InputError, match="at least two of"):
        pretrain(layers[:1], str(tmp_path / "one.safetensors"), patch_size=5, samples=100, epochs=1, device="cpu")
