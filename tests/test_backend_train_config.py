"""TrainConfig is the one place a training option lives: the CLI's train flags come from it,
api.train takes it, and its checks name the parameter."""

from __future__ import annotations

import pytest

from rsvl.backend.cli import build_parser
from rsvl.backend.errors import InputError
from rsvl.backend.training.config import LOSSES, TrainConfig, fields


def _train_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["train"]


def test_every_option_with_a_flag_is_a_cli_flag_with_the_fields_default():
    actions = {a.dest: a for a in _train_parser()._actions}
    for f in fields():
        if f.metadata["flag"]:
            action = actions[f.name]
            assert f.metadata["flag"] in action.option_strings
            assert action.default == f.default, f.name
            if f.metadata["choices"]:
                assert list(action.choices) == list(f.metadata["choices"])


def test_the_cli_builds_the_config_it_is_given():
    args = build_parser().parse_args(["train", "--hsi", "a.tif", "--labels", "l.tif", "-o", "m.safetensors",
                                      "--epochs", "7", "--learning-rate", "0.01", "--loss", "clip", "--augment",
                                      "--recipe", "mmlgnet", "--band-groups", "g.json", "--members", "3",
                                      "--reference", "0", "--no-align", "--device", "cpu"])
    config = TrainConfig.from_namespace(args)
    assert config == TrainConfig(epochs=7, learning_rate=0.01, loss="clip", augment=True, recipe="mmlgnet",
                                 band_groups_file="g.json", members=3, reference=0, align=False, device="cpu")
    assert TrainConfig.from_namespace(build_parser().parse_args(
        ["train", "--ms", "a.tif", "--labels", "l.tif", "-o", "m"])) == TrainConfig()


@pytest.mark.parametrize("change, message", [
    ({"epochs": 0}, "EPOCHS must be at least 1"),
    ({"batch_size": 1}, "BATCH_SIZE must be at least 2"),
    ({"patch_size": 4}, "PATCH_SIZE must be odd"),
    ({"validation_fraction": 1.0}, r"VALIDATION_FRACTION must be in \[0, 1\)"),
    ({"learning_rate": 0.0}, "LEARNING_RATE must be positive"),
    ({"loss": "hinge"}, "LOSS must be one of supervised, clip"),
    ({"recipe": "magic"}, "RECIPE must be one of"),
    ({"device": "tpu"}, "DEVICE must be one of auto, cpu, cuda"),
    ({"members": 0}, "MEMBERS must be at least 1"),
])
def test_bad_values_are_refused_naming_the_parameter(change, message):
    TrainConfig().validate()
    with pytest.raises(InputError, match=message):
        TrainConfig().replace(**change).validate()


def test_unknown_options_are_refused():
    with pytest.raises(TypeError, match="unknown training option"):
        TrainConfig().replace(epoch=3)


def test_losses_are_the_models():
    from rsvl.backend.models.mmlgnet import LOSSES as MODEL_LOSSES

    assert tuple(MODEL_LOSSES) == LOSSES
