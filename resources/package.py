"""Build the plugin ZIP (``make package``): ``python3 resources/package.py REPO OUT.zip``.

The ZIP holds one top folder ``rsvl/`` with what the plugin needs at run time: the files
git tracks (and new files it does not ignore), less tests, benchmarks, docs and developer
files. The runtime requirement lists travel with it (``requirements/*.txt`` but
``dev.txt``): the dependency check and the installer read them. Written to a temporary
file and moved into place, so a failed run leaves no half-written ZIP.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import zipfile

# Paths (relative to the repository) that stay out of the ZIP.
EXCLUDED = re.compile(
    r"^(tests/|bench/|docs/|\.ci/|\.github/|\.gitignore$|Makefile$|pyproject\.toml$|CHANGELOG\.md$"
    r"|requirements/dev\.txt$|resources/qgis_process\.in$|resources/demo\.sh$|resources/package\.py$)"
)
# Never in a plugin ZIP (the plugin repository refuses them).
FORBIDDEN = re.compile(r"(^|/)(__pycache__|__MACOSX|\.git)(/|$)|\.py[co]$")


def plugin_files(repo: str):
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         capture_output=True, check=True).stdout.decode("utf-8")
    for path in sorted(set(filter(None, out.split("\0")))):
        if EXCLUDED.match(path) or FORBIDDEN.search(path) or not os.path.isfile(os.path.join(repo, path)):
            continue
        yield path


def build(repo: str, out: str) -> int:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".rsvl-zip-", suffix=".tmp", dir=os.path.dirname(os.path.abspath(out)))
    os.close(fd)
    count = 0
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in plugin_files(repo):
                zf.write(os.path.join(repo, path), f"rsvl/{path}")
                count += 1
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return count


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: package.py REPO OUT.zip")
    n = build(sys.argv[1], sys.argv[2])
    print(f"rsvl: plugin zip at {sys.argv[2]} ({n} files)")
