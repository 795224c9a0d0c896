"""`make package` builds a ZIP that the QGIS plugin repository accepts (its published upload
rules, checked here one by one) and that carries what the installer reads."""

from __future__ import annotations

import configparser
import re
import subprocess
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parent.parent
REQUIRED = ("name", "description", "version", "qgisMinimumVersion", "author", "email", "about", "tracker",
            "repository")
CATEGORIES = ("Raster", "Vector", "Database", "Web", "Mesh", "Analysis")  # the menus QGIS files plugins under


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(["make", "-s", "package", f"DIST={dist}"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return dist / "rsvl.zip"


def test_zip_follows_the_plugin_repository_rules(package):
    assert package.stat().st_size <= 25_000_000  # the repository's upload limit
    with zipfile.ZipFile(package) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        for name in names:
            assert ".." not in name and not name.startswith("/") and "\\" not in name, name
            assert not re.match(r"^[A-Za-z]:", name), name
            assert not name.endswith((".pyc", ".pyo")), name
            parts = name.split("/")
            assert not {"__pycache__", "__MACOSX", ".git"} & set(parts), name
        assert {n.split("/")[0] for n in names} == {"rsvl"}  # one top folder, a Python identifier
        for required in ("rsvl/__init__.py", "rsvl/metadata.txt", "rsvl/LICENSE", "rsvl/requirements/runtime.txt",
                         "rsvl/requirements/scaleout.txt", "rsvl/requirements/baselines.txt",
                         "rsvl/backend/runtime/dependencies.py", "rsvl/backend/runtime/installer.py",
                         "rsvl/plugin/installer_dialog.py"):
            assert required in names, required
        for left_out in ("rsvl/tests/", "rsvl/bench/", "rsvl/docs/", "rsvl/.ci/", "rsvl/Makefile",
                         "rsvl/requirements/dev.txt", "rsvl/pyproject.toml"):
            assert not any(n.startswith(left_out) for n in names), left_out
        parser = configparser.ConfigParser()
        parser.optionxform = str
        parser.read_string(zf.read("rsvl/metadata.txt").decode("utf-8"))
        meta = dict(parser.items("general"))
        icon = meta.get("icon", "")
        assert f"rsvl/{icon}" in names, icon
    for key in REQUIRED:
        assert meta.get(key, "").strip(), f"metadata.txt lacks {key}"
    for key in ("tracker", "repository", "homepage"):
        url = urlparse(meta[key])
        assert url.scheme in ("http", "https") and url.netloc, (key, meta[key])
    assert "/" not in meta["author"]
    assert meta["category"] in CATEGORIES and meta["category"] == "Raster"
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"])
    assert meta["hasProcessingProvider"] == "yes"
    # The about text names what the plugin needs and how to get it.
    for word in ("PyTorch", "rasterio", "Install dependencies"):
        assert word in meta["about"], word


def test_zip_version_is_the_backend_version(package):
    from rsvl.backend import __version__

    with zipfile.ZipFile(package) as zf:
        text = zf.read("rsvl/metadata.txt").decode("utf-8")
    assert f"version={__version__}\n" in text
