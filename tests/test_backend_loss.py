"""The supervised contrastive loss (issue 13, item 8): same-class pairs are positives."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rsvl.backend.models.mmlgnet import supervised_contrastive_loss, symmetric_contrastive_loss


def _batch(y, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    classes = F.normalize(torch.randn(int(max(y)) + 1, dim, generator=g), dim=1)
    z_v = F.normalize(torch.randn(len(y), dim, generator=g), dim=1)
    return z_v, classes[torch.tensor(y)], classes, torch.tensor(y)


def test_a_tiny_batch_by_hand():
    """Three images of classes (0, 0, 1) and their prompts, the two class-0 prompts
    different (two templates); scale 2. Similarities (rows images, columns prompts):
    (2, 1.6, 0), (1.2, 1.92, 1.6), (0, 1.2, 2). Supervised: a row's positives are the
    columns of its class, each with target 1/2 for class 0; the paper's loss has one
    positive per row (its own column), so there the other class-0 prompt is a negative."""
    from math import exp, log

    z_v = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    z_t = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    lse_i = [log(exp(2) + exp(1.6) + 1), log(exp(1.2) + exp(1.92) + exp(1.6)), log(1 + exp(1.2) + exp(2))]
    lse_t = [log(exp(2) + exp(1.2) + 1), log(exp(1.6) + exp(1.92) + exp(1.2)), log(1 + exp(1.6) + exp(2))]
    i2t = [lse_i[0] - (2 + 1.6) / 2, lse_i[1] - (1.2 + 1.92) / 2, lse_i[2] - 2]
    t2i = [lse_t[0] - (2 + 1.2) / 2, lse_t[1] - (1.6 + 1.92) / 2, lse_t[2] - 2]
    expected = 0.5 * (sum(i2t) / 3 + sum(t2i) / 3)
    got = supervised_contrastive_loss(z_v, z_t, y, torch.tensor(2.0)).item()
    assert abs(got - expected) < 1e-6, (got, expected)
    diagonal = [2, 1.92, 2]
    paper = 0.5 * (sum(a - d for a, d in zip(lse_i, diagonal)) + sum(a - d for a, d in zip(lse_t, diagonal))) / 3
    assert abs(symmetric_contrastive_loss(z_v, z_t, torch.tensor(2.0)).item() - paper) < 1e-6
    assert abs(expected - paper) > 0.05  # the two losses differ on this batch


def test_equals_the_paper_loss_when_every_class_is_distinct():
    z_v, z_t, _, y = _batch([0, 1, 2, 3])
    scale = torch.tensor(14.0)
    assert torch.allclose(supervised_contrastive_loss(z_v, z_t, y, scale), symmetric_contrastive_loss(z_v, z_t, scale))


def test_image_to_text_half_is_cross_entropy_over_distinct_prompts():
    """With repeated classes, the image→text direction equals the cross-entropy against the
    batch's distinct prompts, each weighted by how often it occurs (a log-count bias on its
    logit), plus the constant mean log count: a repeated prompt is one target."""
    y_list = [0, 0, 1, 2, 2, 2]
    z_v, z_t, classes, y = _batch(y_list)
    scale = torch.tensor(10.0)
    full = supervised_contrastive_loss(z_v, z_t, y, scale)
    s = scale * z_t @ z_v.t()  # the text→image direction, computed independently
    pos = (y[:, None] == y[None, :]).float()
    t2i = -((pos / pos.sum(1, keepdim=True)) * F.log_softmax(s, 1)).sum(1).mean()
    log_count = torch.log(torch.bincount(y).float())
    i2t = F.cross_entropy(scale * z_v @ classes.t() + log_count, y) + log_count[y].mean()
    assert torch.allclose(full, 0.5 * (i2t + t2i), atol=1e-5)


def test_same_as_the_paper_loss_with_one_prompt_per_class_but_not_with_several():
    """With one prompt per class (one template), same-class rows of the similarity matrix
    are identical, and the paper's loss summed over the batch equals the supervised one:
    the 'same-class negatives' cancel out. With several prompts per class (templates,
    band-group prompts) they do not, and only the supervised loss treats them as positives."""
    z_v, z_t, _, y = _batch([0, 0, 1, 2, 2, 2])
    scale = torch.tensor(10.0, requires_grad=True)
    z_v.requires_grad_(True)
    a = supervised_contrastive_loss(z_v, z_t, y, scale)
    b = symmetric_contrastive_loss(z_v, z_t, scale)
    assert torch.allclose(a, b, atol=1e-5)
    ga = torch.autograd.grad(a, z_v)[0]
    gb = torch.autograd.grad(b, z_v)[0]
    assert torch.allclose(ga, gb, atol=1e-5)
    # two different prompts for class 0 (e.g. two templates)
    g = torch.Generator().manual_seed(1)
    varied = z_t.clone()
    varied[1] = F.normalize(z_t[1] + 0.5 * torch.randn(z_t.shape[1], generator=g), dim=0)
    a = supervised_contrastive_loss(z_v, varied, y, scale)
    b = symmetric_contrastive_loss(z_v, varied, scale)
    assert not torch.allclose(a, b, atol=1e-3)


def test_the_loss_chosen_is_the_loss_trained_with_and_recorded(scene, tmp_path, helpers):
    """LOSS changes training: from the same seed and labels, "clip" gives other weights than
    "supervised" (which gives the same weights twice, so the difference is the loss's, not
    chance), and each file's header records the loss it was trained with. The default recipe
    mixes samples (mixup), where the two losses differ even with one prompt per class."""
    from safetensors.torch import load_file

    from rsvl.backend import api
    from rsvl.backend.io.raster import LayerSpec

    layers = [LayerSpec(str(scene.paths["hsi"]), "hsi")]
    weights, history = {}, {}
    for name, loss in (("supervised", "supervised"), ("again", "supervised"), ("clip", "clip")):
        out = tmp_path / f"{name}.safetensors"
        result = api.train(layers, str(scene.labels), str(out), **{**helpers.fast, "epochs": 2}, loss=loss)
        training = api.describe_model(str(out))["training"]
        assert training["loss"] == loss and result.epochs_run == 2
        weights[name] = load_file(str(out))
        history[name] = [h["train_loss"] for h in training["history"]]
    a, again, b = weights["supervised"], weights["again"], weights["clip"]
    assert a.keys() == again.keys() == b.keys()
    assert all(torch.equal(a[k], again[k]) for k in a) and history["supervised"] == history["again"]
    assert history["clip"] != history["supervised"]
    # Relative change of each weight tensor: about 2 % typically (rounding noise alone, as
    # between two losses that are equal in exact arithmetic, is below 1e-4).
    change = sorted(float((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-12)) for k in a if a[k].is_floating_point())
    assert change[len(change) // 2] > 1e-3, change


def test_unknown_loss_is_refused(scene, tmp_path):
    from rsvl.backend import api
    from rsvl.backend.errors import InputError
    from rsvl.backend.io.raster import LayerSpec

    with pytest.raises(InputError, match="LOSS must be one of supervised, clip"):
        api.train([LayerSpec(str(scene.paths["hsi"]), "hsi")], str(scene.labels), str(tmp_path / "m.safetensors"),
                  loss="triplet")


def test_mixed_images_share_their_positives_by_hand():
    """Mixup's targets: image 0 is 0.75 of sample 0 (class 0) and 0.25 of sample 2
    (class 1); images 1 and 2 are unmixed. Same similarities as the tiny batch above. Row 0's
    positives weigh 0.75 on each class-0 column and 0.25 on the class-1 column, normalised
    to (0.375, 0.375, 0.25); column 2 (class 1) is matched by image 2 (1) and image 0 (0.25)."""
    from math import exp, log

    z_v = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    z_t = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    mix = (torch.tensor([2, 1, 0]), torch.tensor([0.75, 1.0, 1.0]))
    s = [[2, 1.6, 0], [1.2, 1.92, 1.6], [0, 1.2, 2]]
    w = [[0.75, 0.75, 0.25], [1, 1, 0], [0, 0, 1]]  # images × texts

    def ce(row_logits, row_weights):
        lse = log(sum(exp(v) for v in row_logits))
        return -sum(wt / sum(row_weights) * (v - lse) for v, wt in zip(row_logits, row_weights))

    i2t = sum(ce(s[i], w[i]) for i in range(3)) / 3
    t2i = sum(ce([s[i][j] for i in range(3)], [w[i][j] for i in range(3)]) for j in range(3)) / 3
    got = supervised_contrastive_loss(z_v, z_t, y, torch.tensor(2.0), mix=mix).item()
    assert abs(got - 0.5 * (i2t + t2i)) < 1e-6
    assert abs(got - supervised_contrastive_loss(z_v, z_t, y, torch.tensor(2.0)).item()) > 0.01


def test_unmixed_shares_give_the_plain_losses():
    z_v, z_t, _, y = _batch([0, 0, 1, 2, 2, 3])
    scale = torch.tensor(10.0)
    mix = (torch.randperm(6, generator=torch.Generator().manual_seed(1)), torch.ones(6))
    assert torch.allclose(supervised_contrastive_loss(z_v, z_t, y, scale, mix=mix),
                          supervised_contrastive_loss(z_v, z_t, y, scale))
    assert torch.allclose(symmetric_contrastive_loss(z_v, z_t, scale, mix=mix), symmetric_contrastive_loss(z_v, z_t, scale))
    half = (mix[0], torch.full((6,), 0.5))  # the paper's loss with mixing: own text and the partner's, half each
    s = scale * z_v @ z_t.t()
    target = 0.5 * torch.eye(6) + 0.5 * torch.eye(6)[mix[0]]
    i2t = -((target / target.sum(1, keepdim=True)) * F.log_softmax(s, 1)).sum(1).mean()
    t2i = -((target.t() / target.t().sum(1, keepdim=True)) * F.log_softmax(s.t(), 1)).sum(1).mean()
    assert torch.allclose(symmetric_contrastive_loss(z_v, z_t, scale, mix=half), 0.5 * (i2t + t2i))
