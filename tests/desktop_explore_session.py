"""Drives the rsvl Explore panel in a real desktop QGIS as a user does; run by
tests/test_plugin_desktop.py as ``qgis --code tests/desktop_explore_session.py`` under a
virtual X server.

Loads the sample scene, opens the panel from the rsvl menu, picks the model, presses *Embed
view* (a background task), types two prompts (Enter), exports the first map, clicks a pixel
with *Find similar*, saves the area above the threshold as training polygons of two classes,
and trains 2 epochs on them from rsvl:train's dialog. Grabs the main window with the panel to
the config's ``screenshot`` when given. Writes what it saw as JSON to the config's
``result`` and exits QGIS.
"""

import os
import sys

# QGIS runs this file with exec() (no __file__): its path follows --code on QGIS's command line.
_ARGS = open("/proc/self/cmdline", encoding="utf-8").read().split("\0")
sys.path.insert(0, os.path.dirname(os.path.abspath(_ARGS[_ARGS.index("--code") + 1])))

from desktop_common import (  # noqa: E402 (after its folder is on sys.path)
    CONFIG,
    RESULT,
    quit_qgis,
    run_processing_dialog,
    save,
    settle,
    start_later,
    wait,
)


def threshold_at(panel, quantile):
    """Drag the threshold slider to the similarity at ``quantile`` of the map on show."""
    import numpy as np

    sims = panel.session.shown.sims
    value = float(np.nanquantile(np.nan_to_num(sims.max(axis=0), nan=-1.0), quantile))
    panel.slider.setValue(int(round(value * 100)))
    settle(0.3)
    return panel.slider.value() / 100


def main():
    import numpy as np
    import qgis.utils
    from qgis.core import QgsPointXY, QgsProject
    from qgis.PyQt.QtCore import QPoint, Qt
    from qgis.PyQt.QtTest import QTest

    iface = qgis.utils.iface
    window = iface.mainWindow()
    window.move(0, 0)
    window.resize(1400, 900)
    RESULT["plugin_loaded"] = "rsvl" in qgis.utils.plugins
    steps = RESULT["steps"]
    plugin = qgis.utils.plugins["rsvl"]
    dem = iface.addRasterLayer(CONFIG["lidar"], "dem")
    s2 = iface.addRasterLayer(CONFIG["ms"], "s2")
    canvas = iface.mapCanvas()
    canvas.setExtent(s2.extent())
    canvas.refresh()
    settle(1.0)

    # The panel, from the rsvl menu's action (also on the toolbar).
    plugin.explore_action.trigger()
    panel = plugin.explore
    settle()
    panel.model.setFilePath(CONFIG["model"])
    settle()
    steps["layers"] = {m: (box.currentLayer().name() if box.currentLayer() else None)
                       for m, box in panel.layer_boxes.items() if not box.isHidden()}
    panel.embed_button.click()
    wait(lambda: panel.session.view is not None or "could not" in panel.status.text(), 300, "embedding the view")
    view = panel.session.view
    steps["embed"] = {"status": panel.status.text(), "window": list(view.window) if view else None,
                      "step": view.step if view else None}
    save()

    # Two prompts, typed and entered.
    maps = []
    for prompt in CONFIG["prompts"]:
        panel.prompt.clear()
        QTest.keyClicks(panel.prompt, prompt)
        QTest.keyClick(panel.prompt, Qt.Key_Return)
        settle()
        shown = panel.session.shown
        maps.append({"prompt": prompt, "layer": shown.layer.name() if shown else None,
                     "in_project": bool(shown and QgsProject.instance().mapLayer(shown.layer.id()))})
        if prompt == CONFIG["prompts"][0]:
            panel.export_file.setFilePath(CONFIG["export"])
            panel.export_button.click()
            first_threshold = threshold_at(panel, 0.7)
            panel.class_name.setText(prompt)
            panel.labels_file.setFilePath(CONFIG["labels"])
            panel.save_button.click()
            maps[-1]["saved"] = panel.status.text()
            maps[-1]["threshold"] = first_threshold
    steps["prompts"] = maps
    save()

    # Find similar: a click on the canvas at the configured map point.
    panel.click_button.setChecked(True)
    x, y = CONFIG["click"]
    pixel = canvas.getCoordinateTransform().transform(QgsPointXY(x, y))
    QTest.mouseClick(canvas.viewport(), Qt.LeftButton, Qt.NoModifier, QPoint(int(pixel.x()), int(pixel.y())))
    settle()
    shown = panel.session.shown
    steps["click"] = {"kind": shown.kind if shown else None, "status": panel.status.text(),
                      "max": float(np.nanmax(shown.sims)) if shown else None}
    panel.click_button.setChecked(False)
    threshold_at(panel, 0.9)
    panel.class_name.setText(CONFIG["click_class"])
    panel.save_button.click()
    steps["click"]["saved"] = panel.status.text()
    save()
    if CONFIG.get("screenshot"):
        canvas.refresh()
        settle(1.5)
        window.grab().save(CONFIG["screenshot"], "PNG")

    # Train 2 epochs on the polygons, from rsvl:train's dialog.
    polygons = [layer for layer in QgsProject.instance().mapLayers().values()
                if layer.name() == "rsvl training polygons"]
    steps["polygons_layer"] = [layer.source() for layer in polygons]
    steps["train"] = run_processing_dialog("rsvl:train", {
        "INPUT_MS": [s2.id()], "INPUT_LIDAR": [dem.id()], "TRAINING": polygons[0].id() if polygons else "",
        "CLASS_FIELD": "class", "EPOCHS": 2, "PATCH_SIZE": 5, "DEVICE": "cpu", "OUTPUT_MODEL": CONFIG["trained"]},
        300)
    RESULT["finished"] = True
    save()
    panel.close()
    quit_qgis()


start_later(main, 1000)
