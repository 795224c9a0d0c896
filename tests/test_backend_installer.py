"""The installer with the real pip, offline, on tiny wheels made in tmp_path: QGIS's numpy
is kept, a cancelled or failed install leaves nothing, a reinstall replaces the folder whole."""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from pathlib import Path

import pytest

from rsvl.backend.errors import CancelledError
from rsvl.backend.runtime import dependencies, installer
from rsvl.backend.runtime.dependencies import Requirement

NUMPY = importlib.metadata.version("numpy")


@pytest.fixture(autouse=True)
def hermetic_pip(monkeypatch):
    """pip reads no configuration file of this machine (mirrors, constraints)."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)


def plan(folder, wheelhouse, *requirements, groups=("runtime",)):
    return installer.InstallPlan(folder=str(folder), requirements=[Requirement(n, s, n, "runtime") for n, s in requirements],
                                 groups=list(groups), python=dependencies.python_executable(), torch_build="pip",
                                 wheelhouse=str(wheelhouse), pins=[f"numpy=={NUMPY}"])


def test_offline_install_keeps_qgis_numpy(tmp_path, helpers):
    wheels = tmp_path / "wheelhouse"
    helpers.make_wheel(wheels, "toy", "1.0", requires=["numpy", "toydep>=2"])
    helpers.make_wheel(wheels, "toydep", "2.1")
    helpers.make_wheel(wheels, "numpy", NUMPY)  # what pip must take: the running version
    helpers.make_wheel(wheels, "numpy", "99.0")  # what it would take without the constraint
    folder = tmp_path / "profile" / "rsvl" / "python3"
    lines = []
    result = installer.install(plan(folder, wheels, ("toy", ">=1")), log_line=lines.append)
    assert sorted(result.installed) == ["toy", "toydep"] and not result.restart_required
    assert (folder / "toy" / "__init__.py").exists() and (folder / "toydep").is_dir()
    assert not (folder / "numpy").exists() and not list(folder.glob("numpy-*.dist-info"))
    assert any(f"numpy-{NUMPY}" in line for line in lines)  # pip resolved the pinned numpy...
    assert any("removed numpy" in line for line in lines)  # ...and rsvl left QGIS's in charge
    manifest = json.loads((folder / installer.MANIFEST).read_text())
    assert manifest["groups"] == ["runtime"] and manifest["requirements"] == ["toy>=1"]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["python3"]  # no staging left beside it
    assert result.size_bytes == installer.folder_size(str(folder)) > 0


def test_a_numpy_other_than_qgis_one_fails_clearly_and_leaves_nothing(tmp_path, helpers):
    wheels = tmp_path / "wheelhouse"
    helpers.make_wheel(wheels, "toy", "1.0", requires=["numpy>=99"])
    helpers.make_wheel(wheels, "numpy", "99.0")
    folder = tmp_path / "profile" / "rsvl" / "python3"
    with pytest.raises(installer.InstallError, match=r"pip failed \(exit 1\); nothing was installed") as err:
        installer.install(plan(folder, wheels, ("toy", "")))
    assert f"rsvl keeps QGIS's numpy=={NUMPY}" in str(err.value)
    assert list(folder.parent.iterdir()) == []


def test_cancel_leaves_the_folder_as_it_was(tmp_path, helpers):
    wheels = tmp_path / "wheelhouse"
    helpers.make_wheel(wheels, "toy", "1.0")
    folder = tmp_path / "profile" / "rsvl" / "python3"
    (folder / "old").mkdir(parents=True)
    (folder / "old" / "kept.txt").write_text("before")
    seen = []
    with pytest.raises(CancelledError, match="nothing was installed"):
        installer.install(plan(folder, wheels, ("toy", "")), log_line=seen.append, is_cancelled=lambda: bool(seen))
    assert (folder / "old" / "kept.txt").read_text() == "before" and not (folder / "toy").exists()
    assert sorted(p.name for p in folder.parent.iterdir()) == ["python3"]


def test_reinstall_replaces_the_whole_folder(tmp_path, helpers):
    wheels = tmp_path / "wheelhouse"
    helpers.make_wheel(wheels, "toy", "1.0")
    helpers.make_wheel(wheels, "toy", "2.0")
    folder = tmp_path / "rsvl" / "python3"
    installer.install(plan(folder, wheels, ("toy", "<2")))
    (folder / "stray.txt").write_text("from an earlier run")
    installer.install(plan(folder, wheels, ("toy", ">=2")))
    assert "2.0" in (folder / "toy" / "__init__.py").read_text() and not (folder / "stray.txt").exists()
    assert sorted(p.name for p in folder.parent.iterdir()) == ["python3"]


def test_a_folder_in_use_waits_as_pending(tmp_path, helpers, monkeypatch):
    """Where the old folder cannot be moved (Windows holds loaded DLLs), the new one waits and
    replaces it at the next start."""
    wheels = tmp_path / "wheelhouse"
    helpers.make_wheel(wheels, "toy", "1.0")
    folder = tmp_path / "rsvl" / "python3"
    (folder / "old").mkdir(parents=True)
    real_replace = os.replace

    def locked(src, dst):
        if os.path.abspath(src) == str(folder):
            raise PermissionError(32, "The process cannot access the file because it is being used")
        return real_replace(src, dst)

    monkeypatch.setattr(installer.os, "replace", locked)
    result = installer.install(plan(folder, wheels, ("toy", "")))
    assert result.restart_required and "restart QGIS" in result.reason
    assert (folder / "old").is_dir() and (Path(str(folder) + ".pending") / "toy").is_dir()
    monkeypatch.setattr(installer.os, "replace", real_replace)
    monkeypatch.setattr(sys, "path", list(sys.path))
    dependencies.activate(str(folder))  # the next start
    assert (folder / "toy").is_dir() and not (folder / "old").exists()


def test_plan_asks_only_for_what_qgis_python_lacks_and_pins_numpy(tmp_path, monkeypatch):
    req = tmp_path / "requirements"
    req.mkdir()
    (req / "runtime.txt").write_text("numpy>=1.0  # import: numpy\nrsvl-absent-toy>=1  # import: rsvl_absent_toy\n")
    (req / "scaleout.txt").write_text("rsvl-absent-dask>=1  # import: rsvl_absent_dask\n")
    (req / "baselines.txt").write_text("")
    monkeypatch.setattr(dependencies, "REQUIREMENTS_DIR", str(req))
    p = installer.make_plan(str(tmp_path / "rsvl"), ["runtime"], torch_build="cpu")
    assert [r.pip for r in p.requirements] == ["rsvl-absent-toy>=1"] and p.pins == [f"numpy=={NUMPY}"]
    # An earlier install's groups are installed again: the folder is always one whole install.
    (tmp_path / "rsvl").mkdir()
    (tmp_path / "rsvl" / installer.MANIFEST).write_text(json.dumps({"groups": ["runtime", "scaleout"]}))
    p = installer.make_plan(str(tmp_path / "rsvl"), ["runtime"], torch_build="cpu")
    assert p.groups == ["runtime", "scaleout"] and len(p.requirements) == 2
    cmd = installer.pip_command(p, "/t", "/c.txt")
    assert cmd[1:4] == ["-m", "pip", "install"] and cmd[cmd.index("--target") + 1] == "/t"
    assert cmd[cmd.index("--constraint") + 1] == "/c.txt"
    if sys.platform.startswith("linux"):
        assert cmd[cmd.index("--extra-index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    offline = installer.pip_command(installer.make_plan(str(tmp_path / "x"), wheelhouse=str(tmp_path)), "/t", "/c")
    assert "--no-index" in offline and offline[offline.index("--find-links") + 1] == str(tmp_path)
    assert "--extra-index-url" not in offline
    with pytest.raises(installer.InstallError, match="is not a folder"):
        installer.make_plan(str(tmp_path / "x"), wheelhouse=str(tmp_path / "none"))
    (req / "runtime.txt").write_text("numpy>=99  # import: numpy\n")
    with pytest.raises(installer.InstallError, match=r"does not install or replace packages QGIS is built with: numpy"):
        installer.make_plan(str(tmp_path / "rsvl"), ["runtime"])
