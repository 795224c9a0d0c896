"""Processing parameters as users and saved files give them: enum values by name (DEVICE=cpu),
files saved before 0.4 (option indices, classify's BATCH_SIZE, PRESET=open_clip:ARCH), no
labels layer proposed, every TrainConfig option a parameter of rsvl:train, help links."""

from __future__ import annotations

import pytest
from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback, QgsProcessingParameterEnum

from rsvl.backend.training.config import fields


def alg(name):
    return QgsApplication.processingRegistry().algorithmById(f"rsvl:{name}")


class Feedback(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.warnings = []

    def pushWarning(self, text):  # noqa: N802 (QGIS API name)
        self.warnings.append(text)


def test_named_enums_use_static_strings(plugin):
    for name in ("train", "classify", "query", "retrieve", "pretrain"):
        device = alg(name).parameterDefinition("DEVICE")
        assert isinstance(device, QgsProcessingParameterEnum) and device.usesStaticStrings(), name
        assert device.options() == ["auto", "cpu", "cuda"] and device.defaultValue() == "auto"
    for name in ("query", "retrieve", "train"):
        preset = alg(name).parameterDefinition("PRESET")
        assert preset.usesStaticStrings() and preset.defaultValue() == "auto"
        assert {"auto", "llama3-ms-clip", "open_clip"} <= set(preset.options())
    for key in ("RECIPE", "LOSS"):
        assert alg("train").parameterDefinition(key).usesStaticStrings()
    assert "'DEVICE':'cpu'" in alg("classify").asPythonCommand({"DEVICE": "cpu"}, QgsProcessingContext())


def test_every_training_option_is_a_parameter_of_train(plugin):
    train = alg("train")
    for f in fields():
        if f.metadata["param"]:
            d = train.parameterDefinition(f.metadata["param"])
            assert d is not None, f.metadata["param"]
            if f.metadata["choices"]:
                assert d.options() == list(f.metadata["choices"]) and d.defaultValue() == f.default


def test_files_from_before_0_4_still_run_with_a_deprecation_warning(plugin):
    from rsvl.plugin.algorithms.parameters import legacy_parameters

    feedback = Feedback()
    out = legacy_parameters(alg("classify"), {"DEVICE": 1, "BATCH_SIZE": 128}, feedback)
    assert out == {"DEVICE": "cpu", "TILE_SIZE": 128}
    assert "BATCH_SIZE is deprecated" in feedback.warnings[0]
    # the new name wins over the old one when both are given
    assert legacy_parameters(alg("classify"), {"BATCH_SIZE": 128, "TILE_SIZE": 64})["TILE_SIZE"] == 64
    assert legacy_parameters(alg("train"), {"RECIPE": "2", "LOSS": 1}) == {"RECIPE": "band-groups", "LOSS": "clip"}
    assert legacy_parameters(alg("query"), {"PRESET": "open_clip:ViT-B-32"}) == {
        "PRESET": "open_clip", "OPEN_CLIP_ARCH": "ViT-B-32"}
    ok, message = alg("classify").checkParameterValues({"DEVICE": 1, "MODEL": "x"}, QgsProcessingContext())
    assert "DEVICE" not in message


def test_open_clip_preset_needs_its_architecture(plugin):
    from qgis.core import QgsProcessingException

    from rsvl.plugin.algorithms.parameters import foundation_kwargs

    context = QgsProcessingContext()
    query = alg("query")
    assert foundation_kwargs(query, {"PRESET": "open_clip", "OPEN_CLIP_ARCH": "ViT-B-32"}, context)["preset"] == \
        "open_clip:ViT-B-32"
    assert foundation_kwargs(query, {"PRESET": "remoteclip-rn50"}, context)["preset"] == "remoteclip-rn50"
    with pytest.raises(QgsProcessingException, match="PRESET open_clip needs OPEN_CLIP_ARCH"):
        foundation_kwargs(query, {"PRESET": "open_clip"}, context)


@pytest.mark.parametrize("name, key", [("train", "TRAINING"), ("evaluate", "REFERENCE")])
def test_no_labels_layer_is_proposed_and_none_is_refused(plugin, qgis_iface, helpers, tmp_path, name, key):
    """With a raster in the project, the dialog's labels widget starts empty (a required layer
    parameter would preselect it: a DEM trained on as classes), and a run without labels says so."""
    from qgis.core import QgsProject, QgsRasterLayer
    from qgis.gui import QgsGui, QgsProcessingContextGenerator, QgsProcessingParameterWidgetContext  # noqa: F401

    scene = helpers.make_scene(tmp_path / "s", size=16, modalities=("lidar",))
    layer = QgsRasterLayer(str(scene.paths["lidar"]), "dem")
    QgsProject.instance().addMapLayer(layer)
    try:
        definition = alg(name).parameterDefinition(key)
        wrapper = QgsGui.processingGuiRegistry().createParameterWidgetWrapper(definition, 0)  # Standard dialog
        widget = wrapper.createWrappedWidget(QgsProcessingContext())
        try:
            assert wrapper.parameterValue() in (None, "")
        finally:  # Qt objects must not outlive QGIS's application (a crash at exit otherwise)
            from qgis.PyQt import sip

            sip.delete(widget)
            sip.delete(wrapper)
        params = {"INPUT_LIDAR": [str(scene.paths["lidar"])], "INPUT": str(scene.paths["lidar"]),
                  "OUTPUT_MODEL": str(tmp_path / "m.safetensors")}
        ok, message = alg(name).checkParameterValues(params, QgsProcessingContext())
        assert not ok and f"{key} is not set" in message
    finally:
        QgsProject.instance().removeMapLayer(layer.id())


def test_each_algorithm_links_to_its_docs_section(plugin):
    for name in ("train", "classify", "query", "evaluate", "retrieve", "split", "pretrain"):
        assert alg(name).helpUrl() == f"https://github.com/rsvl/rsvl/blob/main/docs/qgis.md#{name}"
