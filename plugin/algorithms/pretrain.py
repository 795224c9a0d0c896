"""rsvl:pretrain — self-supervised Siamese pretraining of the encoders on unlabelled layers."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingOutputNumber,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
)

from .base import DEVICE_HELP, INPUTS_HELP, MODEL_FILTER, RsvlAlgorithm
from .parameters import short_help


class PretrainAlgorithm(RsvlAlgorithm):
    def name(self):
        return "pretrain"

    def displayName(self):  # noqa: N802 (QGIS API name)
        return "Pretrain encoders without labels (multimodal Siamese)"

    def parameter_help(self) -> str:
        return (
            "Learns the per-modality encoders from unlabelled co-registered layers, before any label exists: the "
            "same place seen by two modalities (e.g. HSI and LiDAR, MS and SAR) should give the same "
            "representation (SimSiam with stop-gradient). Give the result as PRETRAINED to rsvl:train to train with "
            "few labels.<br><br>" + INPUTS_HELP +
            "At least two modalities are needed.<br>"
            "<b>PATCH_SIZE</b>: odd patch side in pixels; rsvl:train must use the same.<br>"
            "<b>SAMPLES</b>: random valid pixels drawn over the scene. <b>EPOCHS</b>, <b>BATCH_SIZE</b>, "
            "<b>LEARNING_RATE</b>: Adam optimisation. <b>SEED</b>: same seed, same encoders on the CPU.<br>"
            + DEVICE_HELP +
            "<b>OUTPUT</b>: the encoder file (.safetensors). Outputs FINAL_LOSS (SimSiam's loss, -1 at best)."
        )

    def shortHelpString(self):  # noqa: N802 (QGIS API name)
        return short_help(
            'Learns the per-modality encoders from unlabelled co-registered layers (multimodal Siamese, self-'
            'supervised), before any label exists.',
            inputs=('the INPUT_* layers (two modalities or more).'),
            outputs=("OUTPUT: an encoder file for rsvl:train's PRETRAINED."),
            tip=('pretrain on the whole scene, then train with few labels.'),
            url=self.helpUrl())

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API name)
        self.add_modality_inputs()
        for key, title, kind, default, low in (
                ("PATCH_SIZE", "Patch size (odd)", QgsProcessingParameterNumber.Integer, 11, 1),
                ("SAMPLES", "Pixels drawn", QgsProcessingParameterNumber.Integer, 20000, 16),
                ("EPOCHS", "Epochs", QgsProcessingParameterNumber.Integer, 20, 1),
                ("BATCH_SIZE", "Batch size", QgsProcessingParameterNumber.Integer, 256, 4),
                ("LEARNING_RATE", "Learning rate", QgsProcessingParameterNumber.Double, 1e-3, 0.0),
                ("SEED", "Random seed", QgsProcessingParameterNumber.Integer, 0, 0)):
            p = QgsProcessingParameterNumber(key, title, type=kind, defaultValue=default, minValue=low)
            if key in ("BATCH_SIZE", "LEARNING_RATE", "SEED"):
                p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(p)
        self.add_device()
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Pretrained encoders", fileFilter=MODEL_FILTER))
        self.addOutput(QgsProcessingOutputNumber("FINAL_LOSS", "Final SimSiam loss"))

    def checkParameterValues(self, parameters, context):  # noqa: N802 (QGIS API name)
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        ok, message = self.check_layers(parameters, context, "No input layer: give layers of two modalities")
        if not ok:
            return ok, message
        if self.parameterAsInt(parameters, "PATCH_SIZE", context) % 2 == 0:
            return False, "PATCH_SIZE must be odd"
        return True, ""

    def backend_request(self, parameters, context, feedback):
        from ...backend.training.pretrain import pretrain

        inputs = self.inputs(parameters, context)
        kwargs = dict(
            layers=inputs["layers"], reference=inputs["reference"],
            output=self.parameterAsFileOutput(parameters, "OUTPUT", context),
            patch_size=self.parameterAsInt(parameters, "PATCH_SIZE", context),
            samples=self.parameterAsInt(parameters, "SAMPLES", context),
            epochs=self.parameterAsInt(parameters, "EPOCHS", context),
            batch_size=self.parameterAsInt(parameters, "BATCH_SIZE", context),
            learning_rate=self.parameterAsDouble(parameters, "LEARNING_RATE", context),
            seed=self.parameterAsInt(parameters, "SEED", context), device=self.device(parameters, context),
        )
        return pretrain, kwargs

    def finish(self, result, parameters, context, feedback):
        feedback.pushInfo(f"SimSiam loss {result.history[0]['loss']:.3f} -> {result.history[-1]['loss']:.3f} on "
                          f"{result.n_samples} pixels in {result.seconds:.1f} s")
        return {"OUTPUT": result.path, "FINAL_LOSS": result.history[-1]["loss"]}
