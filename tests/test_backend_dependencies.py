"""The dependency check (no import, fake distributions), the requirement lists, rsvl's
packages folder on sys.path, and the CLI's message when packages are missing."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rsvl.backend.runtime import dependencies
from rsvl.backend.runtime.dependencies import PackageState, Requirement

REPO = Path(__file__).resolve().parent.parent


def fake_distribution(site: Path, name: str, version, module: str = None):
    """A package ``module`` on ``site``; with metadata of ``version`` unless it is None."""
    module = module or name
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text("raise RuntimeError('the check must not import me')\n")
    if version is not None:
        info = site / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


@pytest.fixture
def fake_lists(tmp_path, monkeypatch):
    req = tmp_path / "requirements"
    req.mkdir()
    (req / "runtime.txt").write_text(
        "# comment\nalpha>=1.0  # import: alpha\nbeta-pkg>=1.0,<2  # import: beta\ngamma>=0.1  # import: gamma\n"
        "delta  # import: delta\nepsilon<2  # import: epsilon\n")
    (req / "scaleout.txt").write_text("zeta>=1  # import: zeta\n")
    (req / "baselines.txt").write_text("")
    monkeypatch.setattr(dependencies, "REQUIREMENTS_DIR", str(req))
    site = tmp_path / "site"
    fake_distribution(site, "alpha", "1.2")
    fake_distribution(site, "beta-pkg", "0.9", module="beta")
    fake_distribution(site, "delta", None)  # importable, no metadata (some bundled builds)
    fake_distribution(site, "epsilon", "3.0")
    return site


def test_check_reports_found_missing_too_old_and_too_new(fake_lists):
    states = {s.requirement.name: s for s in dependencies.check(paths=[str(fake_lists)])}
    assert [states[n].status for n in ("alpha", "beta-pkg", "gamma", "delta", "epsilon")] == \
        ["ok", "too old", "missing", "ok", "too new"]
    assert states["alpha"].version == "1.2" and states["gamma"].version is None and states["delta"].version == ""
    assert states["beta-pkg"].location.endswith(os.path.join("beta", "__init__.py"))
    assert "beta" not in sys.modules and "alpha" not in sys.modules  # looked up, never imported
    assert dependencies.check(["zeta"], groups=("runtime", "scaleout"), paths=[str(fake_lists)])[0].status == "missing"


def test_missing_message_names_each_package_and_what_to_do(fake_lists, monkeypatch, tmp_path):
    monkeypatch.setattr(dependencies, "_active_folder", None)
    monkeypatch.delenv(dependencies.PACKAGES_ENV, raising=False)
    message = dependencies.missing_message(dependencies.check(paths=[str(fake_lists)]), "rsvl:train")
    python = dependencies.python_executable()
    assert message.splitlines()[0] == (
        f"rsvl:train needs Python packages that this Python ({python}) does not have: "
        "beta-pkg 0.9 (too old; rsvl needs >=1.0,<2), gamma (missing; rsvl needs >=0.1), "
        "epsilon 3.0 (too new; rsvl needs <2).")
    assert "Plugins ▸ rsvl ▸ Install dependencies…" in message
    numpy = importlib.metadata.version("numpy")
    assert f'-m pip install "beta-pkg>=1.0,<2" "gamma>=0.1" "epsilon<2" "numpy=={numpy}"' in message
    assert "alpha" not in message and "delta" not in message
    # With rsvl's packages folder known (the plugin activated it), the command installs there.
    monkeypatch.setattr(dependencies, "_active_folder", str(tmp_path / "pkgs"))
    message = dependencies.missing_message(dependencies.check(paths=[str(fake_lists)]), "rsvl:train")
    assert f'-m pip install --target "{tmp_path / "pkgs"}" "beta-pkg>=1.0,<2"' in message
    assert dependencies.missing_message(dependencies.check(["alpha", "delta"], paths=[str(fake_lists)])) == ""
    with pytest.raises(dependencies.MissingDependenciesError, match=r"^rsvl:train needs .*gamma \(missing"):
        dependencies.require(["gamma"], "rsvl:train")  # on sys.path, where gamma is missing too


def test_numpy_is_never_offered_for_install():
    state = PackageState(Requirement("numpy", ">=99", "numpy", "runtime"), "1.24.2")
    message = dependencies.missing_message([state], "rsvl:train")
    assert "numpy 1.24.2 (too old; rsvl needs >=99)" in message
    assert "numpy comes with QGIS and rsvl does not replace it" in message
    assert "pip install" not in message


def test_requirement_lists_parse_and_dev_installs_every_group():
    from packaging.requirements import Requirement as PipRequirement
    from packaging.specifiers import SpecifierSet

    names = set()
    for group in dependencies.GROUPS:
        for r in dependencies.read_requirements(group):
            parsed = PipRequirement(r.pip)  # what pip reads from the same line
            assert parsed.name == r.name and parsed.specifier == SpecifierSet(r.specifier), r
            names.add(r.name)
    dev = (REPO / "requirements" / "dev.txt").read_text()
    for group, (file, _title) in dependencies.GROUPS.items():
        assert f"-r {file}" in dev, group
    assert {"torch", "rasterio", "numpy", "open_clip_torch", "transformers", "safetensors"} <= names


def _third_party_imports(root: Path):
    stdlib = set(sys.stdlib_module_names)
    found = {}
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib:
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_every_third_party_module_rsvl_imports_is_listed():
    """A new import of a package must come with its line in requirements/ (the installer and
    the check read only those)."""
    listed = {r.module for g in dependencies.GROUPS for r in dependencies.read_requirements(g)}
    qgis_own = {"qgis", "processing", "osgeo"}  # QGIS's Python bindings
    # Installed with a listed package: rasterio's affine; torch's triton (blocked in QGIS, see host.py);
    # the pretrained-checkpoint loaders' huggingface_hub and tokenizers (transformers, open_clip).
    carried = {"affine", "triton", "huggingface_hub", "tokenizers", "packaging", "pip"}
    imports = {**_third_party_imports(REPO / "backend"), **_third_party_imports(REPO / "plugin")}
    unlisted = {m: where for m, where in imports.items() if m not in listed | qgis_own | carried | {"rsvl"}}
    assert not unlisted, f"imported but not in requirements/*.txt: {unlisted}"


def test_activate_puts_the_folder_first_and_completes_a_pending_install(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    folder = tmp_path / "rsvl" / "python3"
    (folder / "old_pkg").mkdir(parents=True)
    pending = Path(str(folder) + dependencies.PENDING_SUFFIX)
    (pending / "new_pkg").mkdir(parents=True)
    assert dependencies.activate(str(folder)) == str(folder)
    assert sys.path[0] == str(folder) and dependencies.active_folder() == str(folder)
    assert (folder / "new_pkg").is_dir() and not (folder / "old_pkg").exists() and not pending.exists()
    assert dependencies.activate(str(tmp_path / "absent")) is None and str(tmp_path / "absent") not in sys.path


def test_cli_without_torch_says_what_to_install(tmp_path):
    """The system Python, with rsvl but without the .venv: no traceback, the packages named."""
    python = "/usr/bin/python3"
    if not os.path.exists(python) or subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip("needs a system Python without torch")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "RSVL_PACKAGES")}
    env["PYTHONPATH"] = str(REPO / ".venv" / "qgis-plugins")
    proc = subprocess.run([python, "-m", "rsvl.backend", "info", str(tmp_path / "model.safetensors")],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    first = proc.stderr.strip().splitlines()[0]
    assert first.startswith("rsvl: error: rsvl info needs Python packages that this Python (/usr/bin/python3"), first
    assert "torch (missing; rsvl needs >=2.2)" in first
    assert "Plugins ▸ rsvl ▸ Install dependencies…" in proc.stderr
