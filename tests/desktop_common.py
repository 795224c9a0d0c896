"""Helpers shared by the scripts that drive a real desktop QGIS (``qgis --code SCRIPT``):
tests/desktop_session.py, tests/desktop_install_session.py and docs/images_session.py.

QGIS runs a ``--code`` file with ``exec()``: it has no ``__file__`` and its folder is not on
``sys.path``. Each session therefore first puts this module's folder on ``sys.path``, found
from the path that follows ``--code`` on QGIS's command line (``/proc/self/cmdline``), and
then imports from here.

The launcher passes the session's settings as JSON in ``RSVL_DESKTOP_CONFIG``; ``CONFIG["result"]``
is where :func:`save` writes ``RESULT`` (what the session saw), after each step, so that a
QGIS that dies on the way leaves an incomplete (``"finished": false``) record.
"""

import json
import os
import time
import traceback

CONFIG = json.loads(os.environ["RSVL_DESKTOP_CONFIG"])
RESULT = {"finished": False, "steps": {}}
_PENDING = []  # start_later's callbacks, kept alive until QGIS calls them


def save():
    with open(CONFIG["result"], "w", encoding="utf-8") as f:
        json.dump(RESULT, f, indent=1)


def wait(predicate, timeout, what):
    """Process QGIS's events until ``predicate()`` is true; TimeoutError after ``timeout`` s."""
    from qgis.core import QgsApplication

    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError(f"{what} did not finish in {timeout} s")
        QgsApplication.processEvents()
        time.sleep(0.05)


def settle(seconds=0.5):
    """Let Qt lay out and paint what just changed."""
    from qgis.core import QgsApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QgsApplication.processEvents()
        time.sleep(0.02)


def project_layer(path):
    """Name and renderer type of the project layer read from ``path`` (None if none is)."""
    from qgis.core import QgsProject

    for layer in QgsProject.instance().mapLayers().values():
        if os.path.normpath(layer.source()) == os.path.normpath(path):
            return {"name": layer.name(), "renderer": layer.renderer().type() if layer.renderer() else None}
    return None


def run_processing_dialog(algorithm_id, parameters, timeout, before_run=None):
    """Open the algorithm's Processing dialog with ``parameters``, press Run (a background
    task, results loaded into the project as from the Toolbox), wait for it to finish and
    close the dialog. ``before_run(dialog)``, if given, is called once the dialog is shown.
    Returns ``{"ok", "results", "log"}``."""
    import processing
    from qgis.PyQt.QtWidgets import QTextEdit

    dialog = processing.createAlgorithmDialog(algorithm_id, parameters)
    done = {}
    dialog.algorithmFinished.connect(lambda ok, results: done.update(ok=ok, results=dict(results)))
    dialog.show()
    if before_run is not None:
        before_run(dialog)
    dialog.runAlgorithm()
    log = dialog.findChild(QTextEdit, "txtLog")
    try:
        wait(lambda: done or (log is not None and "Execution failed" in log.toPlainText()), timeout, algorithm_id)
    finally:
        text = log.toPlainText() if log is not None else ""
        # Delete the dialog (and the processing context it holds, with its temporary layers)
        # while QGIS is alive, as the Toolbox does; left for interpreter shutdown, any
        # Processing dialog (native algorithms too) crashes QGIS on exit.
        dialog.close()
        dialog.deleteLater()
    return {"ok": done.get("ok", False), "results": {k: str(v) for k, v in done.get("results", {}).items()},
            "log": text[-3000:]}


def quit_qgis():
    """Quit as a user does (File ▸ Exit), after closing the project without saving it."""
    import qgis.utils
    from qgis.core import QgsApplication, QgsProject

    QgsProject.instance().clear()
    QgsProject.instance().setDirty(False)
    QgsApplication.processEvents()
    qgis.utils.iface.actionExit().trigger()


def start_later(main, delay_ms):
    """Run ``main()`` once QGIS's event loop has run ``delay_ms`` ms (the main window is up,
    plugins loaded). An exception is recorded as ``RESULT["error"]`` and QGIS exits with 3."""
    from qgis.PyQt.QtCore import QTimer

    def start():
        from qgis.core import QgsApplication

        try:
            main()
        except Exception:
            RESULT["error"] = traceback.format_exc()
            save()
            QgsApplication.exit(3)

    _PENDING.append(start)
    QTimer.singleShot(delay_ms, start)
