"""rsvl bench: the same training through the command line and through qgis_process (the
plugin path), on the bundled sample's polygons (MS + DEM, CLASS_FIELD=LULC_NAME, SEED=1,
default settings). Records wall time, training time and whether the weights are
bit-identical; writes bench/plugin_path.json.

    .venv/bin/python bench/plugin_path.py [--epochs N]

Inside QGIS, torch's matrix products used to be captured by QGIS's global OpenBLAS
(slower, other numbers); see backend/runtime/host.py. About 3 minutes on 2 cores."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SAMPLE = REPO / "resources" / "sample"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--out", default=str(HERE / "plugin_path.json"))
    args = p.parse_args(argv)
    ms, dem, polygons = SAMPLE / "s2_l1c_2015-07-11.tif", SAMPLE / "dem.tif", SAMPLE / "lulc_polygons.gpkg"
    result = {"load_average_at_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="rsvl-plugin-path-") as tmp:
        runs = {
            "cli": [sys.executable, "-m", "rsvl.backend", "-q", "train", "--ms", ms, "--lidar", dem, "--labels",
                    polygons, "--class-field", "LULC_NAME", "--seed", "1", "--epochs", str(args.epochs),
                    "--device", "cpu", "-o", os.path.join(tmp, "cli.safetensors")],
            "qgis_process": [REPO / ".venv" / "bin" / "qgis_process", "run", "rsvl:train", "--", f"INPUT_MS={ms}",
                             f"INPUT_LIDAR={dem}", f"TRAINING={polygons}", "CLASS_FIELD=LULC_NAME", "SEED=1",
                             f"EPOCHS={args.epochs}", "DEVICE=1",
                             f"OUTPUT_MODEL={os.path.join(tmp, 'qgis_process.safetensors')}"],
        }
        from rsvl.backend.api import describe_model

        for name, cmd in runs.items():
            start = time.perf_counter()
            out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env={**os.environ, "HOME": tmp})
            wall = time.perf_counter() - start
            if out.returncode:
                raise SystemExit(f"{name} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
            training = describe_model(os.path.join(tmp, f"{name}.safetensors"))["training"]
            result[name] = {"wall_seconds": round(wall, 1), "training_seconds": training["seconds"],
                            "epochs_run": training["epochs_run"], "validation_oa": training["validation"]["oa"]}
        from safetensors.torch import load_file

        a = load_file(os.path.join(tmp, "cli.safetensors"))
        b = load_file(os.path.join(tmp, "qgis_process.safetensors"))
        result["bit_identical_weights"] = a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    result["qgis_process_vs_cli_training_time"] = result["qgis_process"]["training_seconds"] / \
        result["cli"]["training_seconds"]
    result["load_average_at_end"] = os.getloadavg()[0]
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(table(result))
    return 0


def table(result: dict) -> str:
    """The two runs as a Markdown table, and the ratio line (bench/docs.py shows the same)."""
    lines = ["| path | wall s | training s | epochs | validation OA |", "|---|---|---|---|---|"]
    for name in ("cli", "qgis_process"):
        r = result[name]
        lines.append(f"| {name} | {r['wall_seconds']} | {r['training_seconds']:.1f} | {r['epochs_run']} | "
                     f"{r['validation_oa']:.4f} |")
    lines.append("")  # the ratio line is no row of the table
    lines.append(f"qgis_process / cli training time: {result['qgis_process_vs_cli_training_time']:.2f}; "
                 f"bit-identical weights: {result['bit_identical_weights']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
