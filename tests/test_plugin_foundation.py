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


def test_metadata_fields_have_the_values_qgis_and_the_plugin_site_expect():
    """metadata.txt as QGIS's plugin manager and plugins.qgis.org read it: every required
    field, with a value of the right form (not merely present)."""
    import re
    import xml.etree.ElementTree as ET

    from qgis.core import Qgis

    from rsvl.backend import __version__

    meta = configparser.ConfigParser(interpolation=None)  # strict: a duplicated key is an error
    meta.optionxform = str  # keys are case-sensitive (qgisMinimumVersion)
    assert meta.read(REPO / "metadata.txt", encoding="utf-8")
    general = meta["general"]
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "repository",
                "tracker", "tags", "icon", "hasProcessingProvider", "experimental"):
        assert general.get(key, "").strip(), key
    assert general["name"] == "rsvl"
    # QGIS 3.22 or newer, and this QGIS satisfies it (no qgisMaximumVersion: the 3.x default).
    assert general["qgisMinimumVersion"] == "3.22" and "qgisMaximumVersion" not in general
    major, minor = (int(x) for x in general["qgisMinimumVersion"].split("."))
    assert Qgis.QGIS_VERSION_INT >= major * 10000 + minor * 100
    assert re.fullmatch(r"\d+\.\d+\.\d+", general["version"]) and general["version"] == __version__
    # the changelog field opens with this version's entry
    assert general["changelog"].startswith(f"{__version__} "), general["changelog"][:40]
    description, about = general["description"], general["about"]
    assert "\n" not in description and 20 <= len(description) <= 200 and description.endswith(".")
    assert len(about) > len(description) and "Processing" in about and "<" not in about + description
    assert general["author"] == "rsvl developers"
    assert re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]{2,}", general["email"]), general["email"]
    assert general["repository"] == "https://github.com/rsvl/rsvl"
    assert general["tracker"] == general["repository"] + "/issues"
    assert general.get("homepage", general["repository"]).startswith("https://")
    tags = [t.strip() for t in general["tags"].split(",")]
    assert all(tags) and len(tags) == len(set(tags)) and all(t == t.lower() for t in tags), tags
    assert {"remote sensing", "classification", "processing"} <= set(tags)
    assert general["category"] in ("Raster", "Vector", "Database", "Web")
    icon = REPO / general["icon"]
    assert general["icon"] == "resources/icon.svg" and icon.is_file()
    assert ET.parse(icon).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    assert general["hasProcessingProvider"] == "yes"
    # booleans as QGIS's plugin manager parses them (True/False, any case)
    flags = {k: general[k] for k in ("experimental", "deprecated", "server") if k in general}
    assert all(v.lower() in ("true", "false") for v in flags.values()), flags
    assert flags.get("deprecated", "False").lower() == "false" and flags.get("server", "False").lower() == "false"


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
