"""Install rsvl's packages into a folder of its own, with QGIS's Python and pip.

What it does, and why:

- **Never touches QGIS's packages.** Only the requirements that QGIS's Python does not
  already meet are asked for (checked without rsvl's folder on the path), numpy is pinned
  to the running version with a pip constraints file (GDAL and QGIS are built against
  it), and whatever pip brings of the protected packages is removed from the result.
- **A folder of rsvl's own** (by default in the QGIS profile, see
  :func:`rsvl.backend.runtime.dependencies.default_folder`), installed with ``pip --target``: no
  administrator rights, nothing in the interpreter's site-packages.
- **All or nothing.** pip installs into a new temporary folder beside the target; only a
  complete install replaces the folder (the previous one is kept until then), so a
  cancelled or failed run leaves the folder as it was. Every install writes the whole
  folder (the groups installed before too), so there is never a mix of two runs. Where
  the old folder cannot be moved (a Windows QGIS holds its DLLs open) the new one waits
  as ``FOLDER.pending`` and replaces it at the next start.
- **PyTorch builds**: ``cpu`` (a tenth of the CUDA build's size) and ``cuda`` come from
  the PyTorch package index where PyPI's default is the other one; ``pip`` uses pip's own
  configuration alone (a company mirror, or where the default is right).
- **Offline**: ``wheelhouse`` is a folder of wheels made with ``pip download`` on a
  connected machine (docs/install.md); pip then reads nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

from ..errors import CancelledError, RsvlError
from .dependencies import GROUPS, PENDING_SUFFIX, PROTECTED, Requirement, check, put_in_place, python_executable

log = logging.getLogger("rsvl")

TORCH_BUILDS = ("auto", "cpu", "cuda", "pip")
TORCH_INDEX = "https://download.pytorch.org/whl/{tag}"
CUDA_TAG = "cu130"
MANIFEST = "rsvl-packages.json"


class InstallError(RsvlError):
    """pip failed, or the install could not be put in place."""


@dataclass
class InstallPlan:
    folder: str  # rsvl's packages folder (created or replaced)
    requirements: List[Requirement]  # what pip installs
    groups: List[str]
    python: str
    torch_build: str  # cpu | cuda | pip
    index_url: Optional[str] = None  # extra index for the PyTorch build
    wheelhouse: Optional[str] = None
    pins: List[str] = field(default_factory=list)  # constraints that keep QGIS's packages


@dataclass
class InstallResult:
    folder: str
    installed: List[str]  # distribution names pip installed (protected ones removed)
    seconds: float
    size_bytes: int
    restart_required: bool
    reason: str = ""  # why a restart is needed
    pending: bool = False  # the folder waits as FOLDER.pending for the next start
    log_tail: str = ""


def detect_torch_build() -> str:
    """cuda where an NVIDIA driver answers, else cpu; pip on macOS (PyPI's wheel is the right one)."""
    if sys.platform == "darwin":
        return "pip"
    return "cuda" if shutil.which("nvidia-smi") else "cpu"


def torch_index(build: str) -> Optional[str]:
    """The extra package index for a PyTorch build, or None where PyPI's default is that build."""
    if build == "cpu" and sys.platform != "darwin":
        return TORCH_INDEX.format(tag="cpu")
    if build == "cuda" and sys.platform == "win32":  # PyPI's Windows wheel is the CPU one
        return TORCH_INDEX.format(tag=CUDA_TAG)
    return None


def _outside(folder: str) -> List[str]:
    folder = os.path.abspath(folder)
    return [p for p in sys.path if p and not os.path.abspath(p).startswith(folder)]


def read_manifest(folder: str) -> dict:
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def make_plan(folder: str, groups: Sequence[str] = ("runtime",), torch_build: str = "auto",
              wheelhouse: Optional[str] = None, index_url: Optional[str] = None,
              python: Optional[str] = None) -> InstallPlan:
    """What an install of ``groups`` (and of the groups the folder already has) asks pip for."""
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise InstallError(f"unknown package group(s): {', '.join(unknown)} (known: {', '.join(GROUPS)})")
    if torch_build not in TORCH_BUILDS:
        raise InstallError(f"torch build {torch_build!r}: choose one of {', '.join(TORCH_BUILDS)}")
    if wheelhouse and not os.path.isdir(wheelhouse):
        raise InstallError(f"wheelhouse {wheelhouse!r} is not a folder: give the folder `pip download` filled")
    folder = os.path.abspath(folder)
    groups = list(dict.fromkeys([*read_manifest(folder).get("groups", []), *groups]))
    groups = [g for g in GROUPS if g in groups]
    build = detect_torch_build() if torch_build == "auto" else torch_build
    # What QGIS's own Python (rsvl's folder left out) does not already meet.
    outside = _outside(folder)
    states = check(None, groups, paths=outside)
    protected_bad = [s for s in states if s.requirement.name in PROTECTED and not s.ok]
    if protected_bad:
        raise InstallError("rsvl does not install or replace packages QGIS is built with: "
                           + ", ".join(s.describe() for s in protected_bad)
                           + ". Install a QGIS whose Python has them.")
    wanted = [s.requirement for s in states if not s.ok and s.requirement.name not in PROTECTED]
    pins = []
    for state in check(PROTECTED, tuple(GROUPS), paths=outside):
        if state.version:
            pins.append(f"{state.requirement.name}=={state.version}")
    return InstallPlan(folder=folder, requirements=wanted, groups=groups, python=python or python_executable(),
                       torch_build=build, index_url=index_url if index_url is not None else torch_index(build),
                       wheelhouse=wheelhouse, pins=pins)


def pip_command(plan: InstallPlan, target: str, constraints: str) -> List[str]:
    cmd = [plan.python, "-m", "pip", "install", "--target", target, "--no-input", "--disable-pip-version-check",
           "--no-warn-script-location", "--progress-bar", "off", "--constraint", constraints]
    if plan.wheelhouse:
        cmd += ["--no-index", "--find-links", plan.wheelhouse]
    elif plan.index_url:
        cmd += ["--extra-index-url", plan.index_url]
    return cmd + [r.pip for r in plan.requirements]


def _remove_distribution(target: str, name: str) -> bool:
    """Delete an installed distribution (its RECORD's files and its dist-info) from ``target``."""
    wanted = re.sub(r"[-_.]+", "_", name).lower()
    removed = False
    for entry in os.listdir(target):
        if not entry.endswith(".dist-info") or \
                re.sub(r"[-_.]+", "_", entry[: -len(".dist-info")].rsplit("-", 1)[0]).lower() != wanted:
            continue
        info = os.path.join(target, entry)
        tops = set()
        try:
            with open(os.path.join(info, "RECORD"), encoding="utf-8") as f:
                for line in f:
                    path = line.rsplit(",", 2)[0].strip()
                    if path and not path.startswith(".."):
                        tops.add(path.split("/")[0])
        except OSError:
            pass
        for top in tops:
            full = os.path.join(target, top)
            if top in ("bin", "Scripts") or not os.path.exists(full):
                continue
            shutil.rmtree(full, ignore_errors=True) if os.path.isdir(full) else os.remove(full)
        shutil.rmtree(info, ignore_errors=True)
        removed = True
    return removed


def _installed(target: str) -> List[str]:
    names = []
    for entry in sorted(os.listdir(target)):
        if entry.endswith(".dist-info"):
            names.append(entry[: -len(".dist-info")].rsplit("-", 1)[0])
    return names


def folder_size(folder: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def _terminate(proc: subprocess.Popen) -> None:
    try:
        if os.name == "nt":
            proc.terminate()
        else:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()


def _run_pip(cmd: List[str], log_line: Callable[[str], None], progress: Callable[[float, str], None],
             is_cancelled: Callable[[], bool], env: dict) -> tuple:
    """Run pip, passing each output line on; (exit code, last lines)."""
    kwargs = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                  encoding="utf-8", errors="replace", bufsize=1, env=env)
    if os.name == "nt":
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
    else:
        kwargs["start_new_session"] = True  # pip's own children stop with it on cancel
    proc = subprocess.Popen(cmd, **kwargs)
    lines: queue.Queue[Optional[str]] = queue.Queue()

    def read():
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    tail: List[str] = []
    collected = 0
    fraction = 0.02
    while True:
        if is_cancelled():
            _terminate(proc)
            raise CancelledError("installation cancelled; nothing was installed")
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:
            break
        tail = (tail + [line])[-40:]
        log_line(line)
        if line.startswith("Collecting "):
            collected += 1
            fraction = min(0.6, 0.02 + 0.02 * collected)
        elif line.startswith("Installing collected packages"):
            fraction = 0.7
        elif line.startswith("Successfully installed"):
            fraction = 0.9
        progress(fraction, line[:120])
    return proc.wait(), tail


def install(plan: InstallPlan, log_line: Callable[[str], None] = log.info,
            progress: Callable[[float, str], None] = lambda f, m: None,
            is_cancelled: Callable[[], bool] = lambda: False) -> InstallResult:
    """Run the plan: pip into a temporary folder, then put it in place (or leave it pending)."""
    start = time.monotonic()
    parent = os.path.dirname(plan.folder)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(plan.folder)}.installing-", dir=parent)
    try:
        if plan.requirements:
            constraints = os.path.join(staging, ".rsvl-constraints.txt")
            with open(constraints, "w", encoding="utf-8") as f:
                f.write("".join(f"{pin}\n" for pin in plan.pins))
            target = os.path.join(staging, "packages")
            cmd = pip_command(plan, target, constraints)
            log_line("$ " + subprocess.list2cmdline(cmd))
            code, tail = _run_pip(cmd, log_line, progress, is_cancelled, dict(os.environ))
            if code != 0:
                first = next((i for i, line in enumerate(tail) if line.startswith("ERROR")), max(0, len(tail) - 8))
                errors = "\n".join(tail[first:first + 15])
                kept = [pin for pin in plan.pins if pin.split("==")[0] in errors]
                if kept:
                    errors += (f"\nrsvl keeps QGIS's {', '.join(kept)}: a package that needs another version cannot "
                               "be installed into this QGIS.")
                raise InstallError(f"pip failed (exit {code}); nothing was installed:\n{errors}")
            for name in PROTECTED:
                if _remove_distribution(target, name):
                    log_line(f"rsvl: removed {name} from the install (QGIS's own is used)")
            os.remove(constraints)
        else:
            target = os.path.join(staging, "packages")
            os.makedirs(target)
        if is_cancelled():
            raise CancelledError("installation cancelled; nothing was installed")
        installed = _installed(target)
        with open(os.path.join(target, MANIFEST), "w", encoding="utf-8") as f:
            json.dump({"groups": plan.groups, "requirements": [r.pip for r in plan.requirements],
                       "installed": installed, "torch_build": plan.torch_build,
                       "python": f"{sys.version_info.major}.{sys.version_info.minor}", "platform": platform.platform(),
                       "wheelhouse": plan.wheelhouse, "index_url": plan.index_url}, f, indent=1)
        progress(0.95, "putting the packages in place")
        restart, reason = put_in_place(target, plan.folder)
        result = InstallResult(folder=plan.folder, installed=installed, seconds=time.monotonic() - start,
                               size_bytes=folder_size(plan.folder if not restart else plan.folder + PENDING_SUFFIX),
                               restart_required=restart, reason=reason, pending=restart)
        if not restart:
            restart, reason = _loaded_elsewhere(plan)
            result.restart_required, result.reason = restart, reason
        progress(1.0, "installed")
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _loaded_elsewhere(plan: InstallPlan) -> tuple:
    """Whether a module of the installed packages is already imported from elsewhere (a restart
    is needed to use the new one)."""
    folder = os.path.abspath(plan.folder)
    stale = []
    for requirement in plan.requirements:
        module = sys.modules.get(requirement.module)
        path = getattr(module, "__file__", None) if module is not None else None
        if path and not os.path.abspath(path).startswith(folder):
            stale.append(requirement.module)
    if stale:
        return True, (f"{', '.join(stale)} {'is' if len(stale) == 1 else 'are'} already loaded in this QGIS from "
                      "another place: restart QGIS to use the installed version")
    return False, ""
