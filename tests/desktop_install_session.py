"""Drives a desktop QGIS as a new user who installed rsvl from its ZIP; run by
tests/test_plugin_desktop_install.py as ``qgis --code tests/desktop_install_session.py``
under a virtual X server, with the system Python and no .venv on any path.

Steps: the message-bar offer; rsvl:train from its dialog without the packages (the message
box a user reads); Plugins ▸ rsvl ▸ Install dependencies… into a temporary folder; then, in
the same QGIS, rsvl:split, rsvl:train (2 epochs), rsvl:classify and rsvl:query from their
dialogs on the bundled sample. Writes what it saw as JSON to the config's ``result``.
"""

import os
import sys
import time

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


def close_message_box_later(seen):
    """Read and close the modal message box the next dialog step opens (what a user reads)."""
    from qgis.PyQt.QtCore import QTimer
    from qgis.PyQt.QtWidgets import QApplication, QMessageBox

    def poll():
        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox):
            seen.append({"title": box.windowTitle(), "text": box.text()})
            box.accept()
        elif not seen:
            QTimer.singleShot(100, poll)

    QTimer.singleShot(100, poll)


def folder_size(folder):
    total = 0
    for root, _dirs, files in os.walk(folder):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files if os.path.isfile(os.path.join(root, f)))
    return total


def main():
    import importlib.util

    import processing
    import qgis.utils
    from qgis.core import QgsProcessingFeedback

    steps = RESULT["steps"]
    RESULT["plugin_loaded"] = "rsvl" in qgis.utils.plugins
    RESULT["python"] = sys.version.split()[0]
    RESULT["venv_on_path"] = [p for p in sys.path if ".venv" in p]
    RESULT["torch_before"] = importlib.util.find_spec("torch") is not None
    bar = qgis.utils.iface.messageBar()
    RESULT["message_bar"] = [item.text() for item in bar.items()]
    save()
    plugin = qgis.utils.plugins["rsvl"]
    sample = CONFIG["sample"]
    inputs = {"INPUT_MS": [os.path.join(sample, "s2_l1c_2015-07-11.tif")],
              "INPUT_LIDAR": [os.path.join(sample, "dem.tif")]}
    out = CONFIG["out"]

    # 1. Train without the packages: the dialog's message box, and processing.run's exception.
    seen = []
    close_message_box_later(seen)
    train = {**inputs, "TRAINING": os.path.join(sample, "lulc.tif"), "EPOCHS": 2,
             "OUTPUT_MODEL": os.path.join(out, "never.safetensors")}
    dialog = processing.createAlgorithmDialog("rsvl:train", train)
    dialog.show()
    dialog.runAlgorithm()
    wait(lambda: seen, 30, "the missing-packages message")
    dialog.close()
    dialog.deleteLater()
    steps["missing_dialog"] = seen[0]
    try:
        processing.run("rsvl:train", train, feedback=QgsProcessingFeedback())
        steps["missing_run"] = {"raised": False}
    except Exception as exc:  # QgsProcessingException, as a Python-console user sees it
        steps["missing_run"] = {"raised": True, "type": type(exc).__name__, "text": str(exc)}
    save()

    # 2. Plugins ▸ rsvl ▸ Install dependencies…
    installer = plugin.open_installer()
    steps["installer_rows_before"] = installer.rows()
    installer.folder.setFilePath(CONFIG["packages"])
    installer.torch.setCurrentIndex(2)  # as pip is configured (this machine's package index)
    installer.source.setCurrentIndex(0)
    start = time.monotonic()
    task = installer.start_install()
    steps["install_started"] = task is not None
    save()
    wait(lambda: installer.install_button.isEnabled(), CONFIG.get("install_timeout", 1800), "the install")
    steps["install"] = {"seconds": round(time.monotonic() - start, 1), "status": installer.status.text(),
                        "size_bytes": folder_size(CONFIG["packages"]), "log_tail": installer.log.toPlainText()[-3000:],
                        "rows_after": installer.rows()}
    installer.close()
    RESULT["torch_after"] = importlib.util.find_spec("torch") is not None
    save()

    # 3. The same QGIS: split, train 2 epochs, classify, query, from their dialogs.
    steps["split"] = run_processing_dialog("rsvl:split", {
        "INPUT": os.path.join(sample, "lulc.tif"), "FRACTION": 0.2,
        "OUTPUT_FIRST": os.path.join(out, "train.tif"), "OUTPUT_SECOND": os.path.join(out, "test.tif")}, 120)
    save()
    steps["train"] = run_processing_dialog("rsvl:train", {
        **inputs, "TRAINING": os.path.join(out, "train.tif"), "EPOCHS": 2, "PATIENCE": 2,
        "OUTPUT_MODEL": CONFIG["model"], "OUTPUT_REPORT": os.path.join(out, "report.html")}, 900)
    save()
    steps["classify"] = run_processing_dialog("rsvl:classify", {
        "MODEL": CONFIG["model"], **inputs, "OUTPUT": CONFIG["classes"]}, 600)
    steps["classify"]["layer"] = project_layer(CONFIG["classes"])
    save()
    steps["query"] = run_processing_dialog("rsvl:query", {
        "MODEL": CONFIG["model"], **inputs, "PROMPTS": "forest\nwater\nbuilt-up area",
        "OUTPUT_SIMILARITY": CONFIG["similarity"], "OUTPUT": CONFIG["best"]}, 600)
    steps["query"]["layer"] = project_layer(CONFIG["best"])
    steps["query"]["similarity_layer"] = project_layer(CONFIG["similarity"])
    RESULT["torch_from"] = getattr(sys.modules.get("torch"), "__file__", None)
    RESULT["finished"] = True
    save()
    quit_qgis()


start_later(main, 1500)
