"""rsvl:evaluate — accuracy of a class raster against reference labels."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingOutputNumber,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingUtils,
)

from .base import RsvlAlgorithm, raster_path
from .parameters import LABEL_CONVENTIONS_HELP, short_help


class EvaluateAlgorithm(RsvlAlgorithm):
    requires = ("numpy", "rasterio")  # no PyTorch: raster reading and counting only

    def name(self):
        return "evaluate"

    def displayName(self):  # noqa: N802 (QGIS API name)
        return "Evaluate classification"

    def parameter_help(self) -> str:
        return (
            "Compares a class raster (e.g. from rsvl:classify) with reference labels on the class raster's grid "
            "and reports overall accuracy (OA), average accuracy (AA, mean per-class recall), Cohen's kappa, "
            "per-class IoU and mIoU, and the confusion matrix. Reference pixels the map leaves unclassified "
            "(nodata, e.g. below a query's threshold) count as errors, in an 'unclassified' column; COVERAGE is "
            "the share of reference pixels the map classified.<br><br>"
            "<b>INPUT</b>: the class raster.<br>"
            "<b>REFERENCE</b>: a class raster (0/nodata = unlabelled, same class codes) or a point/polygon layer.<br>"
            "<b>CLASS_FIELD</b>: for a vector reference, the class field. Classes are matched by name "
            "(case-insensitive) when both the reference and the class raster have class names, by code otherwise; "
            "the log and the report say which.<br>"
            "<b>CLASS_NAME_FIELD</b>: for an integer CLASS_FIELD, the field holding each code's class name "
            "(optional; then classes are matched by name).<br>"
            + LABEL_CONVENTIONS_HELP.replace("the label raster", "the reference raster") +
            "<b>OUTPUT_CSV</b>: confusion matrix with per-class accuracy and IoU (left out: a temporary file, "
            "deleted when QGIS or qgis_process exits; give a file to keep it).<br>"
            "<b>OUTPUT_JSON</b>: all figures as JSON (optional).<br>"
            "<b>OUTPUT_REPORT</b>: optional HTML report with the confusion matrix as a picture (skipped unless a "
            "file is given).<br>"
            "Outputs OA, AA, KAPPA, MIOU and COVERAGE for chaining."
        )

    def shortHelpString(self):  # noqa: N802 (QGIS API name)
        return short_help(
            "Compares a class raster with reference labels: overall and average accuracy, Cohen's kappa, mean"
            ' IoU, per-class figures and the confusion matrix.',
            inputs=('INPUT (a class raster, e.g. from rsvl:classify) and REFERENCE labels (class raster, or '
                    'points/polygons with CLASS_FIELD).'),
            outputs=('OUTPUT_CSV (confusion matrix), optional OUTPUT_JSON and OUTPUT_REPORT (HTML), and OA, AA, KAPPA,'
                     ' MIOU, COVERAGE.'),
            tip=('evaluate on labels the model never saw (rsvl:split).'),
            url=self.helpUrl())

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API name)
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Class raster"))
        self.add_labels("REFERENCE", "Reference labels (class raster, or points/polygons)")
        self.add_class_fields("vector reference")
        self.add_label_conventions("Reference")
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT_CSV", "Confusion matrix", fileFilter="CSV files (*.csv)", optional=True, createByDefault=True))
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT_JSON", "Figures (JSON)", fileFilter="JSON files (*.json)", optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT_REPORT", "Accuracy report", fileFilter="HTML files (*.html)", optional=True,
            createByDefault=False))
        for key, title in (("OA", "Overall accuracy"), ("AA", "Average accuracy"), ("KAPPA", "Cohen's kappa"),
                           ("MIOU", "Mean IoU"), ("COVERAGE", "Coverage (classified / labelled)")):
            self.addOutput(QgsProcessingOutputNumber(key, title))

    def checkParameterValues(self, parameters, context):  # noqa: N802 (QGIS API name)
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        return self.check_labels(parameters, "REFERENCE", context)

    def backend_request(self, parameters, context, feedback):
        from ...backend import api

        ref_path, class_field, class_name_field = self.labels_source(parameters, "REFERENCE", context, feedback)
        self._report = self.parameterAsFileOutput(parameters, "OUTPUT_REPORT", context)
        from ...backend.io.atomic import check_extension, check_outputs

        check_extension("OUTPUT_REPORT", self._report, "report")
        check_outputs([("OUTPUT_REPORT", self._report, 0)])  # before the work, not after it
        kwargs = dict(
            classification=raster_path(self.parameterAsRasterLayer(parameters, "INPUT", context), "INPUT"),
            reference=ref_path, class_field=class_field, class_name_field=class_name_field,
            label_nodata=self.parameterAsString(parameters, "LABEL_NODATA", context).strip() or None,
            class_names=self.parameterAsFile(parameters, "CLASS_NAMES", context) or None,
            # left out (qgis_process, scripts): a temporary file, as the help says
            output_csv=(self.parameterAsFileOutput(parameters, "OUTPUT_CSV", context)
                        or QgsProcessingUtils.generateTempFilename("confusion.csv")),
            output_json=self.parameterAsFileOutput(parameters, "OUTPUT_JSON", context) or None,
        )
        return api.evaluate, kwargs

    def finish(self, result, parameters, context, feedback):
        from ...backend.evaluation.report import write_accuracy_report

        acc = result.accuracy
        feedback.pushInfo(acc.summary())
        if result.n_unclassified:
            feedback.pushWarning(f"{result.n_unclassified} reference pixels are unclassified (nodata) in INPUT: they "
                                 f"count as errors (coverage {acc.coverage:.4f})")
        outputs = {"OA": acc.oa, "AA": acc.aa, "KAPPA": acc.kappa, "MIOU": acc.miou, "OUTPUT_CSV": result.csv_path,
                   "COVERAGE": acc.coverage}
        if result.json_path:
            outputs["OUTPUT_JSON"] = result.json_path
        if self._report:
            write_accuracy_report(self._report, acc, colours=result.colours)
            outputs["OUTPUT_REPORT"] = self._report
        return outputs
