"""The plugin loads in a real QGIS, registers and unregisters its provider, keeps heavy
imports lazy, works through the qgis_process shim and packages into an installable zip."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from qgis.core import QgsApplication

REPO = Path(__file__).resolve().parent.parent
SHIM = REPO / ".venv" / "bin" / "qgis_process"


def test_class_factory_registers_and_unloads_provider(qgis_app, qgis_iface):
    import rsvl

    plugin = rsvl.classFactory(qgis_iface)
    plugin.initGui()
    registry = QgsApplication.processingRegistry()
    provider = registry.providerById("rsvl")
    assert provider is not None and provider.name() == "rsvl"
    assert Path(provider.svgIconPath()).is_file()
    plugin.unload()
    assert registry.providerById("rsvl") is None


def test_loading_the_plugin_imports_no_heavy_library(tmp_path):
    code = """
import sys
from unittest import mock
from qgis.core import QgsApplication
from qgis.PyQt.QtWidgets import QMainWindow
app = QgsApplication([], True)
app.initQgis()
sys.path.append('/usr/share/qgis/python/plugins')
import rsvl
iface = mock.MagicMock()
window = QMainWindow()
iface.mainWindow.return_value = window
plugin = rsvl.classFactory(iface)
plugin.initGui()
assert iface.addPluginToMenu.call_args[0][0] == '&rsvl'
assert QgsApplication.processingRegistry().providerById('rsvl') is not None
print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'open_clip', 'safetensors'}))
plugin.unload()
app.exitQgis()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _shim(*args, home):
    env = {k: v for k, v in os.environ.items() if k not in ("QGIS_CUSTOM_CONFIG_PATH", "QGIS_OPTIONS_PATH")}
    return subprocess.run([str(SHIM), *args], capture_output=True, text=True, timeout=300, cwd=str(home),
                          env={**env, "HOME": str(home)})


def test_qgis_process_shim_enables_and_lists_the_provider(tmp_path):
    out = _shim("plugins", "enable", "rsvl", home=tmp_path)
    assert out.returncode == 0, out.stderr
    ini = tmp_path / ".local/share/QGIS/QGIS3/profiles/default/QGIS/QGIS3.ini"
    assert "rsvl=true" in ini.read_text()
    out = _shim("list", home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "\nrsvl\n" in out.stdout


def test_qgis_process_shim_enables_the_plugin_by_itself(tmp_path):
    out = _shim("list", home=tmp_path)
    assert out.returncode == 0 and "\nrsvl\n" in out.stdout


def test_metadata_has_every_required_field():
    meta = configparser.ConfigParser()
    meta.read(REPO / "metadata.txt")
    general = meta["general"]
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "repository",
                "tracker", "tags", "icon", "hasProcessingProvider", "experimental"):
        assert general.get(key), key
    assert general["qgisMinimumVersion"] == "3.22" and general["hasProcessingProvider"] == "yes"
    assert (REPO / general["icon"]).is_file()
    from rsvl.backend import __version__

    assert general["version"] == __version__


def test_make_package_builds_an_installable_zip(tmp_path):
    out = subprocess.run(["make", "-s", "-C", str(REPO), "package", f"DIST={tmp_path}"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    with zipfile.ZipFile(tmp_path / "rsvl.zip") as z:
        names = z.namelist()
    assert {n.split("/")[0] for n in names} == {"rsvl"}
    assert "rsvl/metadata.txt" in names and "rsvl/__init__.py" in names and "rsvl/LICENSE" in names
    assert "rsvl/backend/api.py" in names and "rsvl/plugin/provider.py" in names
    assert not [n for n in names if n.startswith(("rsvl/tests/", "rsvl/.venv/", "rsvl/bench/")) or "__pycache__" in n]
