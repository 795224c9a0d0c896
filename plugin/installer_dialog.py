"""Plugins ▸ rsvl ▸ Install dependencies…: what rsvl needs, what this QGIS has, and an
install into rsvl's own packages folder in a background task (backend/runtime/installer.py does
the work; this module is the dialog and the QgsTask around it)."""

from __future__ import annotations

from typing import Optional

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsTask
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from ..backend.runtime import dependencies, installer
from . import packages

TORCH_CHOICES = [  # (installer build, label)
    ("cpu", "CPU only (about a tenth of the CUDA build's size; any machine)"),
    ("cuda", "CUDA (NVIDIA GPU with a current driver)"),
    ("pip", "As pip is configured (PyPI's default build, or your mirror)"),
]
SOURCE_INDEX, SOURCE_WHEELHOUSE = 0, 1


class InstallTask(QgsTask):
    """pip in the background; each line of its log reaches the dialog through ``line``."""

    line = pyqtSignal(str)
    done = pyqtSignal(bool, str)

    def __init__(self, plan: installer.InstallPlan):
        super().__init__("rsvl: installing Python packages", QgsTask.CanCancel)
        self.plan = plan
        self.result: Optional[installer.InstallResult] = None
        self.error: Optional[str] = None

    def run(self) -> bool:  # worker thread
        from ..backend.errors import CancelledError, RsvlError

        try:
            self.result = installer.install(self.plan, log_line=self.line.emit,
                                            progress=lambda f, m: self.setProgress(100.0 * f),
                                            is_cancelled=self.isCanceled)
            return True
        except CancelledError as exc:
            self.error = str(exc)
        except RsvlError as exc:
            self.error = str(exc)
        except Exception as exc:  # must reach the user, never a silent failure
            self.error = f"{type(exc).__name__}: {exc}"
        return False

    def finished(self, ok: bool) -> None:  # main thread
        if ok and not self.result.pending:
            dependencies.activate(self.result.folder)  # usable now, but by modules already loaded
        self.done.emit(ok, summary(self.result) if ok else self.error or "cancelled")


def summary(result: installer.InstallResult) -> str:
    size = result.size_bytes / 2 ** 20
    size_text = f"{size / 1024:.1f} GB" if size >= 1024 else f"{size:.0f} MB"
    text = (f"Installed {len(result.installed)} packages ({size_text}) into {result.folder} in "
            f"{result.seconds / 60:.0f} min {result.seconds % 60:.0f} s.")
    if result.restart_required:
        return text + f" Restart QGIS: {result.reason}."
    return text + " rsvl's algorithms can be used now, in this QGIS session."


class InstallerDialog(QDialog):
    def __init__(self, parent=None, tasks: Optional[list] = None):
        super().__init__(parent)
        self.setWindowTitle("rsvl — Install dependencies")
        self.resize(820, 640)
        self.task: Optional[InstallTask] = None
        self._tasks = tasks if tasks is not None else []
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(
            "rsvl runs on PyTorch, transformers, open_clip and rasterio. Those missing from this QGIS's Python are "
            "installed into a folder of rsvl's own: nothing of QGIS is changed (its numpy is kept) and no "
            "administrator rights are needed."))
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["Package", "Group", "Wanted", "Found", "Status"])
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        layout.addWidget(self.table)

        form = QFormLayout()
        self.folder = QgsFileWidget()
        self.folder.setStorageMode(QgsFileWidget.GetDirectory)
        self.folder.setFilePath(packages.configured_folder())
        self.folder.fileChanged.connect(lambda _path: self.refresh())
        form.addRow("Install into", self.folder)
        self.torch = QComboBox()
        for _build, label in TORCH_CHOICES:
            self.torch.addItem(label)
        self.torch.setCurrentIndex([b for b, _ in TORCH_CHOICES].index(installer.detect_torch_build()))
        self.torch.currentIndexChanged.connect(self._torch_changed)
        form.addRow("PyTorch build", self.torch)
        self.index_url = QLineEdit()
        self.index_url.setPlaceholderText("none: pip's configured index (PyPI)")
        form.addRow("Extra index for PyTorch", self.index_url)
        self.source = QComboBox()
        self.source.addItems(["Package index (internet or your mirror)", "Folder of wheels (offline)"])
        self.source.currentIndexChanged.connect(self._source_changed)
        form.addRow("Install from", self.source)
        self.wheelhouse = QgsFileWidget()
        self.wheelhouse.setStorageMode(QgsFileWidget.GetDirectory)
        form.addRow("Folder of wheels", self.wheelhouse)
        optional = QHBoxLayout()
        self.optional = {}
        for group, (_file, title) in dependencies.GROUPS.items():
            if group == "runtime":
                continue
            box = QCheckBox(title.replace("optional: ", ""))
            self.optional[group] = box
            optional.addWidget(box)
        form.addRow("Also install", optional)
        try:
            python = dependencies.python_executable()
        except Exception as exc:  # shown, not raised: the user may set RSVL_PYTHON
            python = f"not found ({exc})"
        form.addRow("Python", QLabel(python))
        layout.addLayout(form)

        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        layout.addWidget(self.progress)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(5000)
        layout.addWidget(self.log)
        buttons = QHBoxLayout()
        self.install_button = QPushButton("Install")
        self.install_button.clicked.connect(self.start_install)
        self.cancel_button = QPushButton("Cancel install")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_install)
        close = QPushButton("Close")
        close.clicked.connect(self.close)
        buttons.addStretch(1)
        for b in (self.install_button, self.cancel_button, close):
            buttons.addWidget(b)
        layout.addLayout(buttons)
        self._torch_changed(self.torch.currentIndex())
        self._source_changed(self.source.currentIndex())
        self.refresh()

    # -- state ------------------------------------------------------------------------------
    def torch_build(self) -> str:
        return TORCH_CHOICES[self.torch.currentIndex()][0]

    def groups(self):
        return ["runtime"] + [g for g, box in self.optional.items() if box.isChecked()]

    def _torch_changed(self, _index):
        self.index_url.setText(installer.torch_index(self.torch_build()) or "")

    def _source_changed(self, index):
        offline = index == SOURCE_WHEELHOUSE
        self.wheelhouse.setEnabled(offline)
        self.index_url.setEnabled(not offline)

    def states(self):
        return dependencies.check(None, tuple(dependencies.GROUPS))

    def refresh(self):
        """The table: each package with the version wanted and the version found (or missing)."""
        states = self.states()
        self.table.setRowCount(len(states))
        for row, state in enumerate(states):
            r = state.requirement
            found = state.version if state.version else ("missing" if state.version is None else "found (no version)")
            cells = [r.name, dependencies.GROUPS[r.group][1], r.specifier or "any", found, state.status]
            for col, text in enumerate(cells):
                self.table.setItem(row, col, QTableWidgetItem(text))
        missing = [s for s in states if not s.ok and s.requirement.group == "runtime"]
        self.status.setText("Every required package is there." if not missing else
                            f"{len(missing)} required package(s) missing or outside the wanted versions.")
        return states

    def rows(self):
        """The table as a list of dicts (what the user reads)."""
        header = [self.table.horizontalHeaderItem(c).text() for c in range(self.table.columnCount())]
        return [{header[c]: self.table.item(r, c).text() for c in range(self.table.columnCount())}
                for r in range(self.table.rowCount())]

    # -- install ----------------------------------------------------------------------------
    def start_install(self) -> Optional[InstallTask]:
        folder = self.folder.filePath().strip()
        if not folder:
            self.status.setText("Choose the folder to install into.")
            return None
        wheelhouse = self.wheelhouse.filePath().strip() if self.source.currentIndex() == SOURCE_WHEELHOUSE else None
        if self.source.currentIndex() == SOURCE_WHEELHOUSE and not wheelhouse:
            self.status.setText("Choose the folder of wheels (made with pip download, see docs/install.md).")
            return None
        try:
            plan = installer.make_plan(folder, self.groups(), torch_build=self.torch_build(), wheelhouse=wheelhouse,
                                       index_url=self.index_url.text().strip() or None)
        except Exception as exc:
            self.status.setText(str(exc))
            return None
        packages.set_configured_folder(folder)
        self.log.clear()
        self.log.appendPlainText(f"Installing into {plan.folder}: "
                                 + (", ".join(r.pip for r in plan.requirements) or "nothing missing"))
        task = InstallTask(plan)
        task.line.connect(self.log.appendPlainText)
        task.progressChanged.connect(lambda value: self.progress.setValue(int(value)))
        task.done.connect(self._finished)
        self.task = task
        self._tasks.append(task)  # a running QgsTask must keep a Python reference
        self.install_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText("Installing… (the log below shows pip's progress)")
        QgsApplication.taskManager().addTask(task)
        return task

    def cancel_install(self):
        if self.task is not None:
            self.task.cancel()

    def _finished(self, ok: bool, message: str):
        self.install_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setValue(100 if ok else 0)
        self.refresh()
        self.status.setText(message)
        self.log.appendPlainText(message)
        QgsMessageLog.logMessage(message, "rsvl", Qgis.Success if ok else Qgis.Warning)
        if self.task in self._tasks:
            self._tasks.remove(self.task)
