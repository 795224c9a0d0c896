"""What rsvl needs from the Python it runs in, checked without importing anything heavy.

The lists are the pip requirement files in ``requirements/`` (``runtime.txt`` is required;
``scaleout.txt`` and ``baselines.txt`` are optional groups), which the plugin ZIP carries.
Each line names a distribution, a version range and, in a ``# import: MODULE`` comment,
the module rsvl imports. :func:`check` looks each one up with package metadata and
``importlib`` finders only (no import), so it costs milliseconds at QGIS start.

rsvl's own packages folder (where Plugins ▸ rsvl ▸ Install dependencies… installs) is put
on ``sys.path`` by :func:`activate`: by the plugin when QGIS loads it, and by
``python -m rsvl.backend`` when ``RSVL_PACKAGES`` names it.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence

from ..errors import RsvlError

log = logging.getLogger("rsvl")

# requirements/ at the plugin folder's root (this file is <plugin>/backend/runtime/dependencies.py)
PLUGIN_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REQUIREMENTS_DIR = os.path.join(PLUGIN_ROOT, "requirements")
# group -> (file, title in messages and the installer)
GROUPS = {
    "runtime": ("runtime.txt", "required"),
    "scaleout": ("scaleout.txt", "optional: Dask scale-out"),
    "baselines": ("baselines.txt", "optional: random-forest baseline"),
}
# Packages QGIS itself is built against: never installed or replaced by rsvl.
PROTECTED = ("numpy",)
# Where an installed folder waits to replace the active one (a Windows QGIS holds its DLLs open).
PENDING_SUFFIX = ".pending"
PACKAGES_ENV = "RSVL_PACKAGES"

_LINE = re.compile(r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?P<spec>[<>=!~][^#;]*)?\s*(#\s*import:\s*(?P<module>[\w.]+))?")
_active_folder: Optional[str] = None


class MissingDependenciesError(RsvlError):
    """Required packages are missing or too old."""


@dataclass(frozen=True)
class Requirement:
    name: str  # distribution name, as pip knows it
    specifier: str  # version range, e.g. ">=2.2" ("" for any)
    module: str  # top-level module rsvl imports
    group: str

    @property
    def pip(self) -> str:
        """The requirement as pip takes it."""
        return f"{self.name}{self.specifier}"


@dataclass(frozen=True)
class PackageState:
    requirement: Requirement
    version: Optional[str]  # installed version; "" when importable without metadata; None when missing
    location: Optional[str] = None

    @property
    def status(self) -> str:
        """'ok', 'missing', 'too old' or 'too new' (outside the wanted range; a version that
        cannot be compared, without ``packaging``, counts as ok)."""
        if self.version is None:
            return "missing"
        if self.version and version_in(self.version, self.requirement.specifier) is False:
            return "too old" if _below(self.version, self.requirement.specifier) else "too new"
        return "ok"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def describe(self) -> str:
        """'torch (missing; rsvl needs >=2.2)', 'numpy 1.21.0 (too old; rsvl needs >=1.22)'."""
        wanted = self.requirement.specifier or "any version"
        if self.version is None:
            return f"{self.requirement.name} (missing; rsvl needs {wanted})"
        return f"{self.requirement.name} {self.version} ({self.status}; rsvl needs {wanted})"


def _specifier_set(spec: str):
    """A ``packaging`` SpecifierSet (``packaging`` itself, else the copy pip carries), or None."""
    for module in ("packaging.specifiers", "pip._vendor.packaging.specifiers"):
        try:
            return importlib.import_module(module).SpecifierSet(spec)
        except ImportError:
            continue
    return None


def version_in(version: str, spec: str) -> Optional[bool]:
    """Whether ``version`` lies in ``spec``; None when it cannot be told (no ``packaging``)."""
    if not spec:
        return True
    specifiers = _specifier_set(spec)
    if specifiers is None:
        return None
    return specifiers.contains(version, prereleases=True)


def _below(version: str, spec: str) -> bool:
    """Whether ``version`` fails one of the lower bounds (>=, >, ~=, ==) of ``spec``."""
    lower = ",".join(s for s in spec.split(",") if s.strip()[:1] in (">", "~", "="))
    return bool(lower) and version_in(version, lower) is False


def read_requirements(group: str = "runtime", folder: Optional[str] = None) -> List[Requirement]:
    """The requirements of one group, in file order."""
    if group not in GROUPS:
        raise ValueError(f"unknown requirement group {group!r} (known: {', '.join(GROUPS)})")
    path = os.path.join(folder or REQUIREMENTS_DIR, GROUPS[group][0])
    requirements = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip() or line.lstrip().startswith(("#", "-")):
                continue
            m = _LINE.match(line)
            if not m:
                continue
            name = m.group("name")
            module = m.group("module") or name.replace("-", "_").lower()
            requirements.append(Requirement(name, (m.group("spec") or "").strip().replace(" ", ""), module, group))
    return requirements


def all_requirements(groups: Iterable[str] = tuple(GROUPS)) -> List[Requirement]:
    return [r for g in groups for r in read_requirements(g)]


def _distribution(name: str, paths: Optional[Sequence[str]]):
    wanted = re.sub(r"[-_.]+", "-", name).lower()
    search = list(paths) if paths is not None else sys.path
    for dist in importlib.metadata.distributions(path=search):
        dist_name = dist.metadata["Name"] or ""
        if re.sub(r"[-_.]+", "-", dist_name).lower() == wanted:
            return dist
    return None


def _module_location(module: str, paths: Optional[Sequence[str]]) -> Optional[str]:
    try:
        if paths is None:
            spec = importlib.util.find_spec(module)
        else:
            spec = importlib.machinery.PathFinder.find_spec(module, list(paths))
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    return spec.origin or (list(spec.submodule_search_locations or []) or [None])[0]


def package_state(requirement: Requirement, paths: Optional[Sequence[str]] = None) -> PackageState:
    """Where and in which version ``requirement`` is found on ``paths`` (default: sys.path),
    without importing it."""
    location = _module_location(requirement.module, paths)
    if location is None:
        return PackageState(requirement, None)
    dist = _distribution(requirement.name, paths)
    return PackageState(requirement, dist.version if dist is not None else "", location)


def check(names: Optional[Iterable[str]] = None, groups: Iterable[str] = ("runtime",),
          paths: Optional[Sequence[str]] = None) -> List[PackageState]:
    """The state of each requirement of ``groups`` (restricted to ``names`` when given)."""
    wanted = None if names is None else {n.lower() for n in names}
    return [package_state(r, paths) for r in all_requirements(groups)
            if wanted is None or r.name.lower() in wanted]


def missing_message(states: Sequence[PackageState], what: str = "rsvl") -> str:
    """One message for the packages in ``states`` that are not ok: what is wrong and what to do."""
    bad = [s for s in states if not s.ok]
    if not bad:
        return ""
    python = python_executable_or_none() or "python"
    numpy = [s for s in bad if s.requirement.name in PROTECTED]
    lines = [f"{what} needs Python packages that this Python ({python}) does not have: "
             + ", ".join(s.describe() for s in bad) + "."]
    if numpy:
        lines.append("numpy comes with QGIS and rsvl does not replace it: install a QGIS built with a newer numpy.")
    installable = [s for s in bad if s.requirement.name not in PROTECTED]
    if installable:
        folder = _active_folder or os.environ.get(PACKAGES_ENV)
        target = f' --target "{folder}"' if folder else ""
        pins = _running_protected_pins()
        lines.append("Install them in QGIS with Plugins ▸ rsvl ▸ Install dependencies… (no administrator rights "
                     "needed), or in a shell with:")
        lines.append(f'  "{python}" -m pip install{target} '
                     + " ".join(f'"{s.requirement.pip}"' for s in installable)
                     + "".join(f' "{p}"' for p in pins))
        lines.append("The install guide (docs/install.md) has the steps for each system, offline installs and GPUs.")
    return "\n".join(lines)


def require(names: Optional[Iterable[str]] = None, what: str = "rsvl", groups: Iterable[str] = ("runtime",)) -> None:
    """Raise :class:`MissingDependenciesError` naming every missing or too-old package."""
    message = missing_message(check(names, groups), what)
    if message:
        raise MissingDependenciesError(message)


def _running_protected_pins() -> List[str]:
    """``numpy==X`` for the protected packages this Python has, so pip keeps them."""
    pins = []
    for name in PROTECTED:
        dist = _distribution(name, None)
        if dist is not None:
            pins.append(f"{name}=={dist.version}")
    return pins


def python_executable_or_none() -> Optional[str]:
    try:
        return python_executable()
    except RsvlError:
        return None


def python_executable() -> str:
    """A Python interpreter of this process's version. Embedded Python (QGIS) reports
    ``sys.executable`` as whatever ``python3`` it found on PATH, or as the host binary,
    so the interpreter next to the running standard library comes first; ``RSVL_PYTHON``
    overrides."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [os.environ.get("RSVL_PYTHON")]
    if os.name == "nt":
        candidates += [os.path.join(sys.exec_prefix, "python.exe"), os.path.join(sys.base_exec_prefix, "python.exe"),
                       os.path.join(sys.exec_prefix, "python3.exe")]
    else:
        candidates += [os.path.join(prefix, "bin", name) for prefix in (sys.exec_prefix, sys.base_exec_prefix)
                       for name in (f"python{version}", "python3")]
    if os.path.basename(sys.executable or "").lower().startswith("python"):
        candidates.append(sys.executable)
    candidates += [shutil.which(f"python{version}"), shutil.which("python3")]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise RsvlError(f"no Python {version} interpreter found beside this QGIS (set RSVL_PYTHON to its path)")


# -- rsvl's packages folder -------------------------------------------------------------------

def default_folder(profile_dir: str) -> str:
    """rsvl's packages folder in a QGIS profile: one per Python version, since wheels are."""
    return os.path.join(profile_dir, "rsvl", f"python{sys.version_info.major}.{sys.version_info.minor}")


def active_folder() -> Optional[str]:
    """The packages folder :func:`activate` put on sys.path, if any."""
    return _active_folder


def activate(folder: Optional[str]) -> Optional[str]:
    """Put ``folder`` (rsvl's packages) first on sys.path, after completing an install that
    waited for a restart (``folder.pending``). Returns the folder when it exists."""
    global _active_folder
    if not folder:
        return None
    folder = os.path.abspath(folder)
    complete_pending(folder)
    _active_folder = folder
    if not os.path.isdir(folder):
        return None
    if folder not in sys.path:
        sys.path.insert(0, folder)
    importlib.invalidate_caches()
    return folder


def activate_from_environment() -> Optional[str]:
    """``RSVL_PACKAGES`` on sys.path (the command line and qgis_process)."""
    return activate(os.environ.get(PACKAGES_ENV))


def put_in_place(target: str, folder: str) -> tuple:
    """Replace ``folder`` by ``target``; (restart needed, why)."""
    pending = folder + PENDING_SUFFIX
    if os.path.abspath(target) != os.path.abspath(pending):
        shutil.rmtree(pending, ignore_errors=True)  # an older install that waited: this one replaces it
    if not os.path.exists(folder):
        os.replace(target, folder)
        return False, ""
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.old-", dir=os.path.dirname(folder))
    os.rmdir(old)
    try:
        os.replace(folder, old)
    except OSError:
        # Files of the old folder are in use (a Windows QGIS holds its DLLs open).
        os.replace(target, pending)
        return True, "the packages in use cannot be replaced while QGIS runs: restart QGIS to use the new ones"
    os.replace(target, folder)
    shutil.rmtree(old, ignore_errors=True)
    return False, ""


def complete_pending(folder: str) -> bool:
    """Put a pending install (``folder.pending``) in place, before anything is imported from
    ``folder``. True when it was."""
    pending = os.path.abspath(folder) + PENDING_SUFFIX
    if not os.path.isdir(pending):
        return False
    try:
        restart, _ = put_in_place(pending, os.path.abspath(folder))
    except OSError as exc:
        log.warning("rsvl: could not put the packages installed last time in place (%s); they wait in %s", exc, pending)
        return False
    return not restart
