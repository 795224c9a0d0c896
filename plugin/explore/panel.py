"""The rsvl Explore dock panel: the widgets over an :class:`~.session.ExploreSession`.

Model and layers at the top (layers proposed from the project by the model's modalities and
band counts), then *Embed view* (the canvas extent, or a drawn rectangle, within a pixel
budget), a prompt line (Enter shows the similarity layer; several prompts separated by ``;``
show the best prompt per pixel), a threshold slider that restyles the layer live, *Find
similar* (click a pixel) and *Similar to area* (draw a polygon, right-click to close it),
and *Save as training polygons* / *Export*.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsGeometry,
    QgsMapLayerProxyModel,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsSettings,
    QgsWkbTypes,
)
from qgis.gui import QgsDockWidget, QgsFileWidget, QgsMapLayerComboBox, QgsMapTool, QgsMapToolEmitPoint, QgsRubberBand
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from ...backend.mapping.explore import CACHE_BYTES, cache_dir
from ..algorithms.parameters import FOUNDATION_FILTER, PRESET_CHOICES
from .session import ExploreSession

SETTINGS = "rsvl/explore/"

MODALITY_TITLES = {"hsi": "HSI", "lidar": "LiDAR / elevation", "sar": "SAR", "ms": "MS"}
DEFAULT_LABELS = os.path.join(os.path.expanduser("~"), "rsvl", "labels", "explore-labels.gpkg")


class PolygonTool(QgsMapTool):
    """Left clicks add vertices, a right click closes the polygon and calls ``done(geometry)``."""

    def __init__(self, canvas, done):
        super().__init__(canvas)
        self.done = done
        self.band = QgsRubberBand(canvas, QgsWkbTypes.PolygonGeometry)
        self.band.setColor(QColor(255, 60, 0, 80))
        self.points: List[QgsPointXY] = []

    def canvasReleaseEvent(self, event):  # noqa: N802 (QGIS API name)
        if event.button() == Qt.RightButton:
            if len(self.points) >= 3:
                geometry = QgsGeometry.fromPolygonXY([self.points + [self.points[0]]])
                self.reset()
                self.done(geometry)
            return
        self.points.append(self.toMapCoordinates(event.pos()))
        self.band.addPoint(self.points[-1])

    def reset(self):
        self.points = []
        self.band.reset(QgsWkbTypes.PolygonGeometry)

    def deactivate(self):
        self.reset()
        super().deactivate()


class ExplorePanel(QgsDockWidget):
    def __init__(self, iface, parent=None, session: Optional[ExploreSession] = None):
        super().__init__("rsvl Explore", parent)
        self.setObjectName("RsvlExplorePanel")
        self.iface = iface
        self.canvas = iface.mapCanvas()
        self.session = session or ExploreSession()
        self.task = None
        self.pending_prompt: Optional[str] = None
        self.area: Optional[QgsGeometry] = None
        body = QWidget()
        layout = QVBoxLayout(body)

        model_box = QGroupBox("Model and layers")
        form = QFormLayout(model_box)
        self.model = QgsFileWidget()
        self.model.setFilter(FOUNDATION_FILTER)
        self.model.setToolTip("an rsvl:train model, or a pretrained checkpoint (Llama3-MS-CLIP, RemoteCLIP, …)")
        self.model.fileChanged.connect(self.model_changed)
        form.addRow("Model", self.model)
        self.preset = QComboBox()
        self.preset.addItems(PRESET_CHOICES)
        self.preset.setToolTip("how the checkpoint is read (auto: from its keys); see rsvl:query's PRESET")
        self.preset_label = QLabel("Preset")
        form.addRow(self.preset_label, self.preset)
        self.arch = QLineEdit()
        self.arch.setPlaceholderText("e.g. ViT-B-32, or local-dir:DIR")
        self.arch_label = QLabel("open_clip architecture")
        form.addRow(self.arch_label, self.arch)
        self.preset.currentTextChanged.connect(self.options_changed)
        self.arch.editingFinished.connect(self.options_changed)
        self.kind = "rsvl"
        self.layer_boxes: Dict[str, QgsMapLayerComboBox] = {}
        self.layer_labels: Dict[str, QLabel] = {}
        for m, title in MODALITY_TITLES.items():
            box = QgsMapLayerComboBox()
            box.setFilters(QgsMapLayerProxyModel.RasterLayer)
            box.setAllowEmptyLayer(True)
            box.setLayer(None)
            label = QLabel(title)
            form.addRow(label, box)
            self.layer_boxes[m], self.layer_labels[m] = box, label
            box.layerChanged.connect(self.options_changed)
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.device.currentTextChanged.connect(self.options_changed)
        form.addRow("Device", self.device)
        layout.addWidget(model_box)

        view_box = QGroupBox("View")
        view_layout = QVBoxLayout(view_box)
        row = QHBoxLayout()
        self.budget = QDoubleSpinBox()
        self.budget.setDecimals(3)
        self.budget.setRange(0.001, 100.0)
        self.budget.setSuffix(" Mpx")
        self.budget.setToolTip("views with more pixels are embedded at a coarser resolution")
        self.embed_button = QPushButton("Embed view")
        self.embed_button.setToolTip("embed the pixels of the visible map (once; seen views come from the cache)")
        self.embed_button.clicked.connect(lambda: self.embed())
        row.addWidget(self.embed_button)
        row.addWidget(QLabel("budget"))
        row.addWidget(self.budget)
        cache_row = QHBoxLayout()
        self.cache_gib = QDoubleSpinBox()
        self.cache_gib.setRange(0.1, 256.0)
        self.cache_gib.setSuffix(" GiB")
        self.cache_gib.setToolTip("memory the cached views may take; the least recently used go first")
        self.cache_disk = QCheckBox("also on disk")
        self.cache_disk.setToolTip(f"keep embedded views in {cache_dir()} for later sessions")
        cache_row.addWidget(QLabel("Cache"))
        cache_row.addWidget(self.cache_gib)
        cache_row.addWidget(self.cache_disk)
        view_layout.addLayout(row)
        view_layout.addLayout(cache_row)
        layout.addWidget(view_box)
        self.load_settings()
        self.budget.valueChanged.connect(self.save_settings)
        self.cache_gib.valueChanged.connect(self.save_settings)
        self.cache_disk.toggled.connect(self.save_settings)

        ask_box = QGroupBox("Ask the map")
        form = QFormLayout(ask_box)
        self.prompt = QLineEdit()
        self.prompt.setPlaceholderText("e.g. greenhouses — several: water; forest; roofs")
        self.prompt.returnPressed.connect(self.ask)
        form.addRow("Prompt", self.prompt)
        self.template = QCheckBox("Wrap in the model's prompt template")
        self.template.setChecked(True)
        form.addRow("", self.template)
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(-100, 100)
        self.slider.setValue(0)
        self.slider.valueChanged.connect(self.threshold_changed)
        self.threshold_label = QLabel("0.00")
        row = QHBoxLayout()
        row.addWidget(self.slider)
        row.addWidget(self.threshold_label)
        form.addRow("Threshold", row)
        buttons = QHBoxLayout()
        self.click_button = QPushButton("Find similar")
        self.click_button.setToolTip("click a pixel: every pixel's similarity to it")
        self.click_button.setCheckable(True)
        self.click_button.toggled.connect(self.click_mode)
        self.area_button = QPushButton("Similar to area")
        self.area_button.setToolTip("draw a polygon (right-click closes it): similarity to its mean embedding")
        self.area_button.setCheckable(True)
        self.area_button.toggled.connect(self.area_mode)
        buttons.addWidget(self.click_button)
        buttons.addWidget(self.area_button)
        form.addRow(buttons)
        layout.addWidget(ask_box)

        label_box = QGroupBox("From exploring to labels")
        form = QFormLayout(label_box)
        self.class_name = QLineEdit()
        self.class_name.setPlaceholderText("class of the area above the threshold")
        form.addRow("Class", self.class_name)
        self.labels_file = QgsFileWidget()
        self.labels_file.setStorageMode(QgsFileWidget.SaveFile)
        self.labels_file.setFilter("GeoPackage (*.gpkg)")
        self.labels_file.setFilePath(DEFAULT_LABELS)
        form.addRow("Labels", self.labels_file)
        self.only_area = QCheckBox("Only inside the drawn area")
        form.addRow("", self.only_area)
        row = QHBoxLayout()
        self.save_button = QPushButton("Save as training polygons")
        self.save_button.clicked.connect(self.save_polygons)
        self.export_file = QgsFileWidget()
        self.export_file.setStorageMode(QgsFileWidget.SaveFile)
        self.export_file.setFilter("GeoTIFF (*.tif *.tiff)")
        self.export_button = QPushButton("Export")
        self.export_button.clicked.connect(self.export)
        row.addWidget(self.save_button)
        form.addRow(row)
        row = QHBoxLayout()
        row.addWidget(self.export_file)
        row.addWidget(self.export_button)
        form.addRow("GeoTIFF", row)
        layout.addWidget(label_box)

        self.status = QLabel("Choose an rsvl model.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.setWidget(body)
        self.click_tool = QgsMapToolEmitPoint(self.canvas)
        self.click_tool.canvasClicked.connect(self.clicked)
        self.polygon_tool = PolygonTool(self.canvas, self.area_drawn)
        self.model_changed("")

    # -- model and layers --------------------------------------------------------------------
    def model_changed(self, path: str) -> None:
        """Show the model's modalities and propose layers of matching band counts."""
        wanted, header = {}, None
        self.kind = "rsvl"
        if path and os.path.isfile(path):
            from ...backend.foundation.fewshot_file import model_kind

            self.kind = model_kind(path)
            if self.kind == "checkpoint":
                wanted = {"ms": set(range(3, 20))}  # a multispectral stack or an RGB raster
                self.say(f"{os.path.basename(path)}: a pretrained checkpoint; give the multispectral (or RGB) layer "
                         "and embed the view.")
            else:
                try:
                    from ...backend.models.modelfile import read_header

                    header = read_header(path)
                except Exception as exc:  # noqa: BLE001 (said in the panel)
                    self.say(f"{exc}", error=True)
            if header is not None:
                for m, n in header.config.bands.items():
                    sel = header.bands.get(m)
                    wanted[m] = {n, sel.input_bands} if sel else {n}
                self.say(f"{os.path.basename(path)}: {', '.join(f'{m} {min(v)} bands' for m, v in wanted.items())}; "
                         f"classes {', '.join(c.name for c in header.classes)}. Embed the view.")
        self.preset.setVisible(self.kind == "checkpoint")
        self.preset_label.setVisible(self.kind == "checkpoint")
        self.options_changed()
        self.layer_labels["ms"].setText("MS / RGB" if self.kind == "checkpoint" else MODALITY_TITLES["ms"])
        names = header.band_names if header is not None else {}
        for m, box in self.layer_boxes.items():
            show = not wanted or m in wanted
            box.setVisible(show)
            self.layer_labels[m].setVisible(show)
            if m in wanted and (box.currentLayer() is None or box.currentLayer().bandCount() not in wanted[m]):
                layer = self.propose(wanted[m], names.get(m, []))
                if layer is not None:
                    box.setLayer(layer)

    def load_settings(self) -> None:
        """The budget and cache settings of the last session (QgsSettings, rsvl/explore/…)."""
        settings = QgsSettings()
        self.budget.setValue(float(settings.value(SETTINGS + "budget_mpx", 4.0)))
        self.cache_gib.setValue(float(settings.value(SETTINGS + "cache_gib", CACHE_BYTES / 2**30)))
        self.cache_disk.setChecked(str(settings.value(SETTINGS + "cache_disk", "false")).lower() == "true")
        self.apply_cache()

    def save_settings(self, *_args) -> None:
        settings = QgsSettings()
        settings.setValue(SETTINGS + "budget_mpx", self.budget.value())
        settings.setValue(SETTINGS + "cache_gib", self.cache_gib.value())
        settings.setValue(SETTINGS + "cache_disk", "true" if self.cache_disk.isChecked() else "false")
        self.apply_cache()

    def apply_cache(self) -> None:
        cache = self.session.cache
        cache.budget = int(self.cache_gib.value() * 2**30)
        cache.folder = cache_dir() if self.cache_disk.isChecked() else None
        with cache.lock:
            while cache.views and cache.nbytes > cache.budget:
                cache.views.popitem(last=False)

    def propose(self, counts, names) -> Optional[QgsRasterLayer]:
        """The project's raster layer most like the model's input: band count in ``counts``,
        the model's band names first, maps with a class palette (rsvl's outputs) last."""
        from ...backend.io.raster import missing_file

        ranked = []
        order = [n.layer() for n in QgsProject.instance().layerTreeRoot().findLayers()]
        for i, layer in enumerate(order):
            if not isinstance(layer, QgsRasterLayer) or layer.bandCount() not in counts or \
                    layer.source().startswith(self.session.folder):
                continue
            same_names = False
            if names and layer.providerType() == "gdal" and not missing_file(layer.source()):
                try:
                    import rasterio

                    with rasterio.open(layer.source()) as ds:
                        same_names = list(ds.descriptions) == list(names)
                except Exception:  # noqa: BLE001 (not a file rasterio reads: no names to compare)
                    same_names = False
            paletted = layer.renderer() is not None and layer.renderer().type() == "paletted"
            ranked.append((not same_names, paletted, i, layer))
        return min(ranked, key=lambda t: t[:3])[3] if ranked else None

    def options_changed(self, *_args) -> None:
        """Another model, layer, preset or device: the next embedding opens them afresh."""
        open_clip = self.kind == "checkpoint" and self.preset.currentText() == "open_clip"
        self.arch.setVisible(open_clip)
        self.arch_label.setVisible(open_clip)
        self.session.close()

    def checkpoint_options(self) -> dict:
        preset = self.preset.currentText()
        if preset == "open_clip":
            if not self.arch.text().strip():
                raise RuntimeError("preset open_clip needs the checkpoint's open_clip architecture, e.g. ViT-B-32 "
                                   "(or local-dir:DIR with open_clip_config.json)")
            preset = f"open_clip:{self.arch.text().strip()}"
        return {"preset": preset}

    def chosen_layers(self):
        return [(m, box.currentLayer()) for m, box in self.layer_boxes.items()
                if not box.isHidden() and box.currentLayer() is not None]

    # -- embedding -----------------------------------------------------------------------------
    def embed(self, extent=None, wait: bool = False) -> bool:
        """Embed the canvas extent (or ``extent``, in the project CRS) in a background task;
        ``wait`` runs it here and now (tests, scripts)."""
        try:
            if self.session.explorer is None:
                layers = self.chosen_layers()
                if not layers:
                    raise RuntimeError("choose the model's layers first")
                options = self.checkpoint_options() if self.kind == "checkpoint" else {}
                self.session.open(self.model.filePath(), layers, device=self.device.currentText(), **options)
            crs = self.canvas.mapSettings().destinationCrs()
            box = self.session.view_extent(extent or self.canvas.extent(), crs)
        except Exception as exc:  # noqa: BLE001 (RsvlError and Processing errors: said in the panel)
            self.say(str(exc), error=True)
            return False
        self.task = self.session.embed_task(box, int(self.budget.value() * 1e6), self.embedded)
        self.say("embedding the view…")
        if wait:
            ok = self.task.run()
            self.task.finished(ok)
            return ok
        QgsApplication.taskManager().addTask(self.task)
        return True

    def embedded(self, session, ok: bool, error: Optional[str]) -> None:
        if not ok:
            self.say(f"the view could not be embedded: {error}", error=True)
            return
        view = session.view
        h, w = view.shape
        text = (f"view: {w} × {h} px, {view.emb.shape[0]:,} valid, "
                + (f"embedded in {view.seconds:.1f} s" if view.seconds else "from the cache")
                + f" ({view.nbytes / 2**20:.0f} MiB). Type a prompt or click a pixel.")
        if view.note:
            text += "\n" + view.note
        self.say(text)
        if self.pending_prompt:
            prompt, self.pending_prompt = self.pending_prompt, None
            self.prompt.setText(prompt)
            self.ask()

    # -- asking -----------------------------------------------------------------------------------
    def ask(self) -> None:
        text = self.prompt.text().strip()
        if not text:
            return
        if self.session.view is None:
            self.pending_prompt = text
            self.embed()
            return
        try:
            shown = self.session.ask(text.split(";"), self.template.isChecked())
        except Exception as exc:  # noqa: BLE001
            self.say(str(exc), error=True)
            return
        self.say(f"{shown.layer.name()}: drag the threshold to show more or less of it.")

    def threshold_changed(self, value: int) -> None:
        self.threshold_label.setText(f"{value / 100:.2f}")
        self.session.set_threshold(value / 100)

    def click_mode(self, on: bool) -> None:
        if on:
            self.area_button.setChecked(False)
            self.canvas.setMapTool(self.click_tool)
        elif self.canvas.mapTool() is self.click_tool:
            self.canvas.unsetMapTool(self.click_tool)

    def area_mode(self, on: bool) -> None:
        if on:
            self.click_button.setChecked(False)
            self.canvas.setMapTool(self.polygon_tool)
        elif self.canvas.mapTool() is self.polygon_tool:
            self.canvas.unsetMapTool(self.polygon_tool)

    def clicked(self, point: QgsPointXY, _button=None) -> None:
        self._similar(points=[point])

    def area_drawn(self, geometry: QgsGeometry) -> None:
        self.area = geometry
        self._similar(area=geometry)

    def _similar(self, points=(), area=None) -> None:
        if self.session.view is None:
            self.say("embed the view first", error=True)
            return
        try:
            shown = self.session.click(points, self.canvas.mapSettings().destinationCrs(), area)
        except Exception as exc:  # noqa: BLE001
            self.say(str(exc), error=True)
            return
        self.say(f"{shown.layer.name()}: drag the threshold to show more or less of it.")

    # -- labels and export ------------------------------------------------------------------------
    def save_polygons(self) -> None:
        try:
            area = self.area if self.only_area.isChecked() else None
            path = self.labels_file.filePath()
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            added = self.session.save_polygons(path, self.class_name.text(), area,
                                               self.canvas.mapSettings().destinationCrs())
        except Exception as exc:  # noqa: BLE001
            self.say(str(exc), error=True)
            return
        self.say(f"{added} polygon(s) of '{self.class_name.text().strip()}' added to {path} (layer labels, field "
                 "class): train with rsvl:train, TRAINING this layer and CLASS_FIELD class.")

    def export(self) -> None:
        try:
            path = self.session.export(self.export_file.filePath())
        except Exception as exc:  # noqa: BLE001
            self.say(str(exc), error=True)
            return
        self.say(f"written: {path}")

    def say(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        self.status.setStyleSheet("color: #b00020" if error else "")
        if error and self.iface is not None and hasattr(self.iface, "messageBar"):
            self.iface.messageBar().pushMessage("rsvl Explore", text, level=Qgis.Warning, duration=8)

    def closeEvent(self, event):  # noqa: N802 (Qt API name)
        for tool in (self.click_tool, self.polygon_tool):
            if self.canvas.mapTool() is tool:
                self.canvas.unsetMapTool(tool)
        super().closeEvent(event)
