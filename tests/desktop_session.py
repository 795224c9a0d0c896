"""Drives a real desktop QGIS the way a user does; run by tests/test_plugin_desktop.py as
``qgis --code tests/desktop_session.py`` under a virtual X server with Mesa's OpenGL.

Steps: rsvl:classify and rsvl:query from their Processing dialogs (Processing background
tasks, results loaded into the project), rsvl ▸ Train in background… (the plugin's dialog,
Run → a QGIS task), and a query with the new model. Writes what it saw as JSON to
``RSVL_DESKTOP_RESULT`` and exits QGIS; if QGIS dies on the way the JSON stays incomplete.
"""

import json
import os
import sys
import time
import traceback

CONFIG = json.loads(os.environ["RSVL_DESKTOP_CONFIG"])
RESULT = {"finished": False, "steps": {}}


def save():
    with open(CONFIG["result"], "w", encoding="utf-8") as f:
        json.dump(RESULT, f, indent=1)


def wait(predicate, timeout, what):
    from qgis.core import QgsApplication

    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError(f"{what} did not finish in {timeout} s")
        QgsApplication.processEvents()
        time.sleep(0.05)


def modules_state():
    state = {}
    for name in ("triton", "torch._dynamo", "transformers", "open_clip", "torch"):
        state[name] = "blocked" if sys.modules.get(name, 0) is None else name in sys.modules
    return state


def project_layer(path):
    from qgis.core import QgsProject

    for layer in QgsProject.instance().mapLayers().values():
        if os.path.normpath(layer.source()) == os.path.normpath(path):
            return {"name": layer.name(), "renderer": layer.renderer().type() if layer.renderer() else None}
    return None


def run_processing_dialog(algorithm_id, parameters, timeout):
    import processing
    from qgis.PyQt.QtWidgets import QTextEdit

    dialog = processing.createAlgorithmDialog(algorithm_id, parameters)
    done = {}
    dialog.algorithmFinished.connect(lambda ok, results: done.update(ok=ok, results=dict(results)))
    dialog.show()
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


def main():
    import qgis.utils
    from qgis.core import QgsTask

    maps = open("/proc/self/maps").read()
    RESULT["mesa_llvm_loaded"] = "libLLVM" in maps
    RESULT["swrast_loaded"] = "swrast" in maps or "_dri.so" in maps
    RESULT["plugin_loaded"] = "rsvl" in qgis.utils.plugins
    RESULT["modules_at_start"] = modules_state()
    save()
    plugin = qgis.utils.plugins["rsvl"]
    inputs = {"INPUT_MS": [CONFIG["ms"]], "INPUT_LIDAR": [CONFIG["lidar"]]}
    steps = RESULT["steps"]

    # 1. rsvl:classify and rsvl:query from their Processing dialogs (background tasks), with
    #    a model trained beforehand: no training has run in this QGIS yet.
    steps["classify"] = run_processing_dialog("rsvl:classify", {
        "MODEL": CONFIG["pretrained"], **inputs, "OUTPUT": CONFIG["classes"]}, 300)
    steps["classify"]["layer"] = project_layer(CONFIG["classes"])
    save()
    steps["query"] = run_processing_dialog("rsvl:query", {
        "MODEL": CONFIG["pretrained"], **inputs, "PROMPTS": "forest\nbuilt-up area\nwater",
        "OUTPUT_SIMILARITY": CONFIG["similarity"], "OUTPUT": CONFIG["best"]}, 300)
    steps["query"]["layer"] = project_layer(CONFIG["best"])
    RESULT["modules_after_classify_query"] = modules_state()
    save()

    # 2. rsvl ▸ Train in background… (the plugin's dialog; Run starts a QGIS task).
    dialog = plugin.open_train_in_background()
    dialog.setParameters({**inputs, "TRAINING": CONFIG["labels"], "EPOCHS": 2, "PATIENCE": 2,
                          "OUTPUT_MODEL": CONFIG["model"], "OUTPUT_REPORT": CONFIG["report"]})
    dialog.runAlgorithm()
    task = plugin.tasks.tasks[-1]
    wait(lambda: task.messages, 300, "background training")
    steps["train"] = {"ok": task.status() == QgsTask.Complete, "messages": task.messages,
                      "model_exists": os.path.exists(CONFIG["model"])}
    save()

    # 3. A query with the model just trained.
    steps["query_new_model"] = run_processing_dialog("rsvl:query", {
        "MODEL": CONFIG["model"], **inputs, "PROMPTS": "meadow\nforest", "OUTPUT_SIMILARITY": CONFIG["similarity2"]},
        300)
    RESULT["modules_at_end"] = modules_state()
    RESULT["qgis_alive"] = True
    RESULT["finished"] = True
    save()
    # Quit as a user does (File ▸ Exit), after closing the project without saving it.
    from qgis.core import QgsProject

    QgsProject.instance().clear()
    QgsProject.instance().setDirty(False)
    qgis.utils.iface.actionExit().trigger()


def start():
    from qgis.core import QgsApplication

    try:
        main()
    except Exception:
        RESULT["error"] = traceback.format_exc()
        save()
        QgsApplication.exit(3)


from qgis.PyQt.QtCore import QTimer  # noqa: E402 (QGIS runs this file as a script)

QTimer.singleShot(1000, start)
