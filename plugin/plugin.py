"""The QGIS plugin object: registers the Processing provider and the menu actions."""

from __future__ import annotations

from qgis.core import QgsApplication
from qgis.PyQt import sip


class RsvlPlugin:
    def __init__(self, iface):
        from ..backend.runtime import host
        from . import packages

        # rsvl's own packages folder (Plugins ▸ rsvl ▸ Install dependencies…) first on sys.path,
        # before anything imports torch: in desktop QGIS and in qgis_process alike.
        packages.activate()
        # Keep triton's LLVM (it crashes a QGIS that loaded Mesa's OpenGL) and transformers
        # out of QGIS: see backend/runtime/host.py. Imports nothing heavy.
        host.embed()
        self.iface = iface
        self.provider = None
        self.actions = []
        self.dialogs = []
        self._tasks = None
        self.install_tasks = []
        self.explore = None

    # Called by QGIS (and by qgis_process) to register Processing providers.
    def initProcessing(self):  # noqa: N802 (QGIS API name)
        from .provider import RsvlProvider

        if self.provider is None:
            self.provider = RsvlProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802 (QGIS API name)
        from qgis.PyQt.QtGui import QIcon
        from qgis.PyQt.QtWidgets import QAction

        from .icons import ICON_PATH

        self.initProcessing()
        action = QAction(QIcon(ICON_PATH), "Train in background…", self.iface.mainWindow())
        action.triggered.connect(self.open_train_in_background)
        self.iface.addPluginToMenu("&rsvl", action)
        self.actions.append(action)
        action = QAction(QIcon(ICON_PATH), "Explore…", self.iface.mainWindow())
        action.setToolTip("rsvl Explore: ask the map in words, or click a pixel to find similar ones")
        action.triggered.connect(self.open_explore)
        self.iface.addPluginToMenu("&rsvl", action)
        self.iface.addToolBarIcon(action)
        self.actions.append(action)
        self.explore_action = action
        action = QAction(QIcon(ICON_PATH), "Install dependencies…", self.iface.mainWindow())
        action.triggered.connect(self.open_installer)
        self.iface.addPluginToMenu("&rsvl", action)
        self.actions.append(action)
        from qgis.PyQt.QtCore import QTimer

        QTimer.singleShot(0, self.offer_installer)

    def offer_installer(self):
        """Once per profile, when required packages are missing: a message-bar button that opens
        the installer (never a modal dialog at start-up). Returns the message-bar item, if any."""
        from qgis.core import Qgis, QgsSettings
        from qgis.PyQt.QtWidgets import QPushButton

        from . import packages

        ok, _message = packages.missing(None, "rsvl")
        if ok or QgsSettings().value(packages.SETTING_OFFERED, False, type=bool):
            return None
        QgsSettings().setValue(packages.SETTING_OFFERED, True)
        bar = self.iface.messageBar()
        item = bar.createMessage("rsvl", "needs Python packages this QGIS does not have yet (PyTorch, …).")
        button = QPushButton("Install dependencies…", item)
        button.clicked.connect(lambda: (self.open_installer(), bar.popWidget(item)))
        item.layout().addWidget(button)
        bar.pushWidget(item, Qgis.Warning, 0)
        return item

    def open_explore(self):
        """Show the rsvl Explore dock (created on first use)."""
        from qgis.PyQt.QtCore import Qt

        from .explore.panel import ExplorePanel

        if self.explore is None or sip.isdeleted(self.explore):
            self.explore = ExplorePanel(self.iface, self.iface.mainWindow())
            self.iface.addDockWidget(Qt.RightDockWidgetArea, self.explore)
        self.explore.show()
        self.explore.raise_()
        return self.explore

    def open_installer(self):
        from .installer_dialog import InstallerDialog

        dialog = InstallerDialog(self.iface.mainWindow(), self.install_tasks)
        self.dialogs = [d for d in self.dialogs if not sip.isdeleted(d)] + [dialog]
        dialog.show()
        return dialog

    @property
    def tasks(self):
        from .tasks import TaskRegistry

        if self._tasks is None:
            self._tasks = TaskRegistry()
        return self._tasks

    def open_train_in_background(self):
        from .tasks import train_in_background_dialog

        dialog = train_in_background_dialog(self.iface, self.tasks)
        self.dialogs = [d for d in self.dialogs if not sip.isdeleted(d)] + [dialog]
        dialog.show()
        return dialog

    def unload(self):
        for action in self.actions:
            self.iface.removePluginMenu("&rsvl", action)
            self.iface.removeToolBarIcon(action)
        self.actions = []
        if self.explore is not None and not sip.isdeleted(self.explore):
            self.explore.session.close()
            self.iface.removeDockWidget(self.explore)
            self.explore.deleteLater()
        self.explore = None
        for dialog in self.dialogs:
            if not sip.isdeleted(dialog):
                dialog.close()
        self.dialogs = []
        if self._tasks is not None:
            for task in list(self._tasks.tasks):
                task.cancel()
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        from ..backend.text.worker import stop_worker

        stop_worker()
