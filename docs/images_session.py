"""Takes the docs' screenshots in a real desktop QGIS; run by docs/make_images.py as
``qgis --code docs/images_session.py`` under a virtual X server, the rsvl plugin enabled.

Loads the sample scene (Sentinel-2 as true colour, bands 4/3/2 stretched; the DEM; the
land-cover labels), opens rsvl:train's dialog with them (not run), runs rsvl:classify and
rsvl:query from their Processing dialogs with the model make_images.py trained (results
loaded and styled as a user sees them), asks the rsvl Explore panel a prompt, and grabs the
windows as PNGs into the config's ``images`` folder. Writes what it did as JSON to the config's ``result`` and exits QGIS.
"""

import os
import sys

# QGIS runs this file with exec() (no __file__): its path follows --code on QGIS's command line.
_ARGS = open("/proc/self/cmdline", encoding="utf-8").read().split("\0")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(_ARGS[_ARGS.index("--code") + 1]))),
                                "tests"))

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

WINDOW = (1280, 800)  # main window: big enough for the panels, small enough to read once scaled in a page
MAX_BYTES = 300_000
PROMPTS = ["forest", "meadow", "water"]
SIMILARITY_PROMPT = "forest"
EXPLORE_THRESHOLD = 20  # the panel's slider: cosine similarity 0.20


def save_png(widget, name):
    """Grab ``widget`` into ``<images>/<name>``, scaled down until the PNG is under MAX_BYTES."""
    from qgis.PyQt.QtCore import QBuffer, QByteArray, QIODevice, Qt

    settle()
    image = widget.grab().toImage()
    scale = 1.0
    while True:
        shown = image if scale == 1.0 else image.scaledToWidth(int(image.width() * scale), Qt.SmoothTransformation)
        data = QByteArray()
        buffer = QBuffer(data)
        buffer.open(QIODevice.WriteOnly)
        shown.save(buffer, "PNG")
        buffer.close()
        if data.size() <= MAX_BYTES or scale < 0.4:
            break
        scale *= 0.9
    path = os.path.join(CONFIG["images"], name)
    with open(path, "wb") as f:
        f.write(bytes(data))
    RESULT["steps"][name] = {"width": shown.width(), "height": shown.height(), "bytes": data.size()}
    save()


def render(canvas):
    """Redraw the map canvas and wait until it has finished."""
    done = []
    canvas.mapCanvasRefreshed.connect(lambda: done.append(True))
    canvas.refreshAllLayers()
    wait(lambda: done and not canvas.isDrawing(), 60, "the map canvas")
    settle()


def layer_tree(layer):
    from qgis.core import QgsProject

    return QgsProject.instance().layerTreeRoot().findLayer(layer.id())


def show_only(visible, expanded=()):
    """Check the layers in ``visible`` and uncheck the others; expand only ``expanded``'s legends."""
    import qgis.utils
    from qgis.core import QgsProject

    qgis.utils.iface.layerTreeView().collapseAllNodes()
    for node in QgsProject.instance().layerTreeRoot().findLayers():
        node.setItemVisibilityChecked(node.layer() in visible)
        node.setExpanded(node.layer() in expanded)


def load_scene():
    """The sample scene as a user would style it: true colour S2 over the DEM, labels on top."""
    import qgis.utils
    from qgis.core import QgsContrastEnhancement, QgsMultiBandColorRenderer, QgsRasterMinMaxOrigin

    iface = qgis.utils.iface
    dem = iface.addRasterLayer(CONFIG["lidar"], "dem")
    s2 = iface.addRasterLayer(CONFIG["ms"], "s2_l1c_2015-07-11")
    lulc = iface.addRasterLayer(CONFIG["lulc"], "lulc")
    for layer in (dem, s2, lulc):
        if layer is None or not layer.isValid():
            raise RuntimeError(f"cannot load the sample scene ({CONFIG['ms']}, {CONFIG['lidar']}, {CONFIG['lulc']})")
    s2.setRenderer(QgsMultiBandColorRenderer(s2.dataProvider(), 4, 3, 2))  # B04 red, B03 green, B02 blue
    s2.setContrastEnhancement(QgsContrastEnhancement.StretchToMinimumMaximum, QgsRasterMinMaxOrigin.CumulativeCut)
    s2.triggerRepaint()
    return s2, dem, lulc


def style_similarity(layer, band):
    """One prompt's similarity band in the Explore panel's colour ramp, stretched to its range."""
    import math

    from qgis.core import QgsRasterBandStats

    from rsvl.plugin.explore.session import similarity_renderer

    stats = layer.dataProvider().bandStatistics(band, QgsRasterBandStats.Min | QgsRasterBandStats.Max)
    low, high = math.floor(stats.minimumValue * 100) / 100, math.ceil(stats.maximumValue * 100) / 100
    similarity_renderer(layer, low, high, band)


def find_layer(path):
    from qgis.core import QgsProject

    for layer in QgsProject.instance().mapLayers().values():
        if os.path.normpath(layer.source()) == os.path.normpath(path):
            return layer
    raise RuntimeError(f"{path} was not loaded into the project")


def rsvl_provider_index(tree):
    """The Processing Toolbox row of the rsvl provider (the one whose algorithms are rsvl:…)."""
    model = tree.model()
    for row in range(model.rowCount()):
        index = model.index(row, 0)
        children = [model.index(i, 0, index) for i in range(model.rowCount(index))]
        algorithms = [tree.algorithmForIndex(child) for child in children]
        if algorithms and all(alg is not None and alg.id().startswith("rsvl:") for alg in algorithms):
            return index
    raise RuntimeError("the rsvl provider is not in the Processing Toolbox")


def main():
    import processing
    import qgis.utils
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtWidgets import QDockWidget

    iface = qgis.utils.iface
    window = iface.mainWindow()
    RESULT["plugin_loaded"] = "rsvl" in qgis.utils.plugins
    save()
    window.move(0, 0)
    window.resize(*WINDOW)
    browser = window.findChild(QDockWidget, "Browser")
    if browser is not None:  # the Layers panel gets the whole height
        browser.hide()
    toolbox = qgis.utils.plugins["processing"].toolbox
    toolbox.hide()
    s2, dem, lulc = load_scene()
    canvas = iface.mapCanvas()
    canvas.setExtent(s2.extent())
    show_only([s2], [])
    iface.messageBar().clearWidgets()
    render(canvas)
    inputs = {"INPUT_MS": [s2.id()], "INPUT_LIDAR": [dem.id()]}
    outputs = CONFIG["outputs"]

    # The Processing Toolbox, rsvl's algorithms listed.
    toolbox.show()
    window.resizeDocks([toolbox], [440], Qt.Horizontal)
    tree = toolbox.algorithmTree
    tree.collapseAll()
    provider_index = rsvl_provider_index(tree)
    tree.expand(provider_index)
    tree.scrollTo(provider_index, tree.PositionAtTop)
    save_png(toolbox, "toolbox.png")
    toolbox.hide()

    # rsvl:train's dialog with the scene as inputs and the land cover as training labels (not run).
    dialog = processing.createAlgorithmDialog("rsvl:train", {**inputs, "TRAINING": lulc.id()})
    dialog.resize(1100, 760)
    dialog.show()
    save_png(dialog, "train-dialog.png")
    dialog.close()
    dialog.deleteLater()

    # rsvl:classify from its dialog (a background task; the class map loaded, styled), then the
    # class map over the scene, its legend expanded.
    classes_path = os.path.join(outputs, "classes.tif")
    steps = RESULT["steps"]
    steps["classify"] = run_processing_dialog("rsvl:classify", {
        "MODEL": CONFIG["model"], **inputs, "OUTPUT": classes_path}, 300)
    save()
    if not steps["classify"]["ok"]:
        raise RuntimeError("rsvl:classify failed:\n" + steps["classify"]["log"])
    classes = find_layer(classes_path)
    iface.messageBar().clearWidgets()
    show_only([classes, s2], [classes])
    iface.setActiveLayer(classes)
    render(canvas)
    save_png(window, "class-map.png")

    # rsvl:query's dialog with the prompts filled (grabbed), then Run.
    def grab_query(dialog):
        dialog.resize(1100, 800)  # down to the Similarity output
        save_png(dialog, "query-dialog.png")

    similarity_path, best_path = os.path.join(outputs, "similarity.tif"), os.path.join(outputs, "best_prompt.tif")
    steps["query"] = run_processing_dialog("rsvl:query", {
        "MODEL": CONFIG["model"], **inputs, "PROMPTS": "\n".join(PROMPTS), "OUTPUT_SIMILARITY": similarity_path,
        "OUTPUT": best_path}, 300, before_run=grab_query)
    save()
    if not steps["query"]["ok"]:
        raise RuntimeError("rsvl:query failed:\n" + steps["query"]["log"])
    similarity, best = find_layer(similarity_path), find_layer(best_path)
    iface.messageBar().clearWidgets()

    # One prompt's similarity with a colour ramp.
    band = PROMPTS.index(SIMILARITY_PROMPT) + 1
    style_similarity(similarity, band)
    similarity.setName(f"Similarity: {SIMILARITY_PROMPT}")
    show_only([similarity], [similarity])
    iface.setActiveLayer(similarity)
    render(canvas)
    save_png(window, "similarity-map.png")
    RESULT["similarity_band"] = similarity.bandName(band)

    # The rsvl Explore panel: the view embedded, a prompt asked, the threshold dragged.
    show_only([s2], [])
    plugin = qgis.utils.plugins["rsvl"]
    plugin.explore_action.trigger()
    panel = plugin.explore
    window.resizeDocks([panel], [420], Qt.Horizontal)
    panel.model.setFilePath(CONFIG["model"])
    panel.embed_button.click()
    wait(lambda: panel.session.view is not None or "could not" in panel.status.text(), 300, "the Explore panel")
    if panel.session.view is None:
        raise RuntimeError("the Explore panel could not embed the view: " + panel.status.text())
    panel.prompt.setText(SIMILARITY_PROMPT)
    panel.ask()
    panel.slider.setValue(EXPLORE_THRESHOLD)
    panel.class_name.setText(SIMILARITY_PROMPT)
    iface.messageBar().clearWidgets()
    render(canvas)
    save_png(window, "explore-panel.png")
    RESULT["explore_status"] = panel.status.text()
    RESULT["layers"] = [layer.name() for layer in (s2, dem, lulc, classes, similarity, best)]
    RESULT["finished"] = True
    save()
    quit_qgis()


start_later(main, 1000)
