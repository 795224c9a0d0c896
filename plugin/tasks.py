"""Long backend jobs as QgsTasks, so training never blocks QGIS.

:class:`BackendJobTask` runs one backend entry point (``api.train``, ``api.classify`` …)
in QGIS's task manager with progress and cancel; when it ends, :meth:`finished` runs on
the main thread, loads the result (a styled class raster, or the model's report) and
tells the user in the message bar. :class:`TrainInBackgroundDialog` is the
"rsvl ▸ Train in background…" dialog: Processing's own parameter panel for rsvl:train,
whose Run button starts a task instead of running in the dialog.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Optional

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsProject, QgsRasterLayer, QgsTask

log = logging.getLogger("rsvl")


class BackendJobTask(QgsTask):
    """Run ``function(**kwargs, progress=…, is_cancelled=…)`` in the background."""

    def __init__(self, description: str, function: Callable, kwargs: dict, iface=None,
                 on_finished: Optional[Callable] = None, after: Optional[Callable] = None):
        super().__init__(description, QgsTask.CanCancel)
        self.function = function
        self.kwargs = kwargs
        self.after = after  # run in the worker thread with the result (e.g. write a report)
        self.iface = iface
        self.on_finished = on_finished
        self.result = None
        self.error: Optional[str] = None
        self.layer: Optional[QgsRasterLayer] = None
        self.messages = []

    def run(self) -> bool:  # worker thread: no GUI, no project access
        from ..backend.errors import RsvlError

        def progress(fraction, message):
            self.setProgress(100.0 * fraction)

        try:
            self.result = self.function(progress=progress, is_cancelled=self.isCanceled, **self.kwargs)
            if self.after is not None:
                self.after(self.result)
            return True
        except RsvlError as exc:  # CancelledError included: finished() tells the two apart
            self.error = str(exc)
            return False
        except Exception as exc:  # an unexpected failure must still reach the user
            log.exception("rsvl task failed")
            self.error = f"{type(exc).__name__}: {exc}"
            return False

    def finished(self, ok: bool) -> None:  # main thread
        if ok:
            message = self._load_result()
            level = Qgis.Success
        else:
            message = f"{self.description()}: " + ("cancelled" if self.isCanceled() else f"failed: {self.error}")
            level = Qgis.Warning if self.isCanceled() else Qgis.Critical
        self.messages.append(message)
        QgsMessageLog.logMessage(message, "rsvl", level)
        if self.iface is not None:
            self.iface.messageBar().pushMessage("rsvl", message, level=level, duration=10)
        if self.on_finished is not None:
            self.on_finished(self, ok)

    def _load_result(self) -> str:
        from .styling import apply_palette, backend_classes, write_class_style

        result = self.result
        if hasattr(result, "model_path"):  # training
            val = result.validation
            text = f"model saved to {result.model_path}"
            if val is not None:
                text += f" (validation OA {val.oa:.3f}, kappa {val.kappa:.3f})"
            return f"{self.description()}: {text}"
        path = getattr(result, "output", None)
        if path and os.path.exists(path):
            classes = backend_classes(result.classes)
            write_class_style(path, classes)
            layer = QgsRasterLayer(path, os.path.splitext(os.path.basename(path))[0], "gdal")
            apply_palette(layer, classes)
            QgsProject.instance().addMapLayer(layer)
            self.layer = layer
            return f"{self.description()}: {path} added to the project"
        return f"{self.description()}: done"


class TaskRegistry:
    """Keeps running tasks referenced (a garbage-collected QgsTask crashes QGIS)."""

    def __init__(self):
        self.tasks = []

    def start(self, task: BackendJobTask) -> BackendJobTask:
        self.tasks.append(task)
        previous = task.on_finished

        def forget(t, ok):
            if previous is not None:
                previous(t, ok)
            if t in self.tasks:
                self.tasks.remove(t)

        task.on_finished = forget
        QgsApplication.taskManager().addTask(task)
        return task


def train_in_background_dialog(iface, registry: TaskRegistry):
    """The rsvl:train parameter dialog whose Run starts a background task."""
    from processing.gui.AlgorithmDialog import AlgorithmDialog
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback
    from qgis.PyQt.QtWidgets import QMessageBox

    algorithm = QgsApplication.processingRegistry().createAlgorithmById("rsvl:train")

    class TrainInBackgroundDialog(AlgorithmDialog):
        def runAlgorithm(self):  # noqa: N802 (QGIS API name)
            parameters = self.createProcessingParameters()
            context = QgsProcessingContext()
            context.setProject(QgsProject.instance())
            ok, message = self.algorithm().checkParameterValues(parameters, context)
            if not ok:
                QMessageBox.warning(self, "rsvl", message)
                return
            try:
                function, kwargs = self.algorithm().backend_request(parameters, context, QgsProcessingFeedback())
            except Exception as exc:  # QgsProcessingException from layer checks
                QMessageBox.warning(self, "rsvl", str(exc))
                return
            report = self.algorithm()._report

            def write_report(result):
                if report:
                    from ..backend.evaluation.report import write_training_report

                    write_training_report(report, result.header, result.validation)

            task = BackendJobTask(f"rsvl train → {os.path.basename(kwargs['output_model'])}", function, kwargs, iface,
                                  after=write_report)
            registry.start(task)
            iface.messageBar().pushMessage("rsvl", "training started in the background (see the task bar)",
                                           level=Qgis.Info, duration=5)
            self.close()

    return TrainInBackgroundDialog(algorithm, parent=iface.mainWindow())
