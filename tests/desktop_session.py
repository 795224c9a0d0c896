"""Drives a real desktop QGIS the way a user does; run by tests/test_plugin_desktop.py as
``qgis --code tests/desktop_session.py`` under a virtual X server with Mesa's OpenGL.

Steps: rsvl:classify and rsvl:query from their Processing dialogs (Processing background
tasks, results loaded into the project), rsvl ▸ Train in background… (the plugin's dialog,
Run → a QGIS task), and a query with the new model. Writes what it saw as JSON to
the config's ``result`` and exits QGIS; if QGIS dies on the way the JSON stays incomplete.
"""

import os
import sys

# QGIS runs this file with exec() (no __file__): its path follows --code on QGIS's command line.
_ARGS = open("/proc/self/cmdline", encoding="utf-8").read().split("\0")
sys.path.insert(0, os.path.dirname(os.path.abspath(_ARGS[_ARGS.index("--code") + 1])))

from desktop_common import (  # noqa: E402 (after its folder is on sys.path)
    CONFIG,
    RESULT,
    project_layer,
    quit_qgis,
    run_processing_dialog,
    save,
    start_later,
    wait,
)


def modules_state():
    state = {}
    for name in ("triton", "torch._dynamo", "transformers", "open_clip", "torch"):
        state[name] = "blocked" if sys.modules.get(name, 0) is None else name in sys.modules
    return state


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
    quit_qgis()


start_later(main, 1000)
