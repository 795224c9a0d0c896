"""rsvl scale-out benchmark: whole-scene classification on a Dask cluster and data-parallel
training under torchrun, each with 2 one-thread workers against 1. Prints a table and
writes bench/scaleout.json.

    make bench-scaleout     # or: .venv/bin/python bench/scaleout.py [--side 1536] [--workdir DIR]

``dask_2_vs_1_speedup``: one generated scene (64-band int16 HSI + float32 LiDAR, the
paper-sized model of bench/run.py) classified by ``api.classify(scheduler=…)`` on a
``LocalCluster`` of 2 worker processes × 1 thread over the same on 1 worker × 1 thread
(wall time of the whole call: windows, transfers, the client's writes). Both clusters are
started and warmed up (model loaded on every worker) before the timed runs, which
alternate, best of ``REPEATS``. Beside it: the same scene classified in this process with
torch's default thread count (what one machine does without a cluster), and a check that
all three class maps are identical.

``ddp_2_vs_1_speedup``: training samples/s (the training loop's own figure, from the model
file's header) of ``torchrun --nproc_per_node 2 … train --distributed`` over one plain
``train`` process, every process with OMP_NUM_THREADS=1, on 8192 labelled pixels of a
generated scene (paper-sized model, 11×11 patches, global batch 128, no validation split);
beside it, the plain process with torch's default threads. Best of ``REPEATS``.

Ratios, not absolute seconds, are the figures to compare across machines; the goal of
1.7 assumes 2 otherwise idle cores (the load average is recorded).

The two speedups are also merged into bench/latest.json (bench/run.py's figures), where
the other engine figures are; its other keys are kept.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPEATS = 2
GOAL = 1.7
TRAIN_SIDE, TRAIN_LABELS, TRAIN_EPOCHS, TRAIN_BATCH = 512, 8192, 3, 128

_spec = importlib.util.spec_from_file_location("rsvl_bench_run", HERE / "run.py")
base = importlib.util.module_from_spec(_spec)  # bench/run.py: machine(), write_scene(), the bench model
_spec.loader.exec_module(base)


def _classify(model_path: Path, hsi: Path, lidar: Path, out: Path, scheduler=None) -> float:
    from rsvl.backend import api
    from rsvl.backend.io.raster import LayerSpec

    start = time.perf_counter()
    api.classify(str(model_path), [LayerSpec(str(hsi), "hsi"), LayerSpec(str(lidar), "lidar")], str(out),
                 device="cpu", scheduler=scheduler)
    return time.perf_counter() - start


def _read(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(1)


def bench_dask(folder: Path, side: int) -> dict:
    from distributed import LocalCluster

    model_path = base._save_bench_model(folder)
    hsi, lidar = base.write_scene(folder, side)
    warm_hsi, warm_lidar = base.write_scene(folder, 256, tag="_warm")
    seconds = {"in_process": [], 1: [], 2: []}
    kwargs = dict(threads_per_worker=1, processes=True, dashboard_address=":0")
    with LocalCluster(n_workers=1, **kwargs) as one, LocalCluster(n_workers=2, **kwargs) as two:
        clusters = {1: one.scheduler_address, 2: two.scheduler_address}
        for n, address in clusters.items():  # workers import torch and load the model once, untimed
            _classify(model_path, warm_hsi, warm_lidar, folder / f"warm{n}.tif", address)
        for _ in range(REPEATS):
            seconds["in_process"].append(_classify(model_path, hsi, lidar, folder / "here.tif"))
            for n, address in clusters.items():
                seconds[n].append(_classify(model_path, hsi, lidar, folder / f"dask{n}.tif", address))
    maps = [_read(folder / name) for name in ("here.tif", "dask1.tif", "dask2.tif")]
    pixels = side * side
    best = {k: min(v) for k, v in seconds.items()}
    return {
        "dask_side": side, "dask_seconds_1_worker": best[1], "dask_seconds_2_workers": best[2],
        "dask_seconds_in_process": best["in_process"],
        "dask_pixels_per_s_1_worker": pixels / best[1], "dask_pixels_per_s_2_workers": pixels / best[2],
        "in_process_pixels_per_s": pixels / best["in_process"],
        "dask_2_vs_1_speedup": best[1] / best[2],
        "dask_2_workers_vs_in_process": best["in_process"] / best[2],
        "dask_same_map": bool(all(np.array_equal(maps[0], m) for m in maps[1:])),
        "dask_seconds_all": {str(k): v for k, v in seconds.items()},
    }


def _write_training_scene(folder: Path) -> tuple:
    import rasterio
    from rasterio.transform import from_origin

    hsi, lidar = base.write_scene(folder, TRAIN_SIDE, tag="_train")
    rng = np.random.default_rng(1)
    codes = np.zeros((TRAIN_SIDE, TRAIN_SIDE), dtype=np.uint8)
    flat = rng.choice(TRAIN_SIDE * TRAIN_SIDE, TRAIN_LABELS, replace=False)
    codes.flat[flat] = rng.integers(1, 7, TRAIN_LABELS)
    labels = folder / "labels_train.tif"
    with rasterio.open(labels, "w", driver="GTiff", width=TRAIN_SIDE, height=TRAIN_SIDE, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(0, TRAIN_SIDE, 1, 1), nodata=0) as ds:
        ds.write(codes, 1)
    return hsi, lidar, labels


def _train(folder: Path, name: str, scene: tuple, processes: int, threads) -> float:
    """Samples/s of one training run (1 process: plain ``train``; more: torchrun + --distributed)."""
    from rsvl.backend.models.modelfile import read_header

    hsi, lidar, labels = scene
    out = folder / f"{name}.safetensors"
    args = ["-q", "train", "--hsi", str(hsi), "--lidar", str(lidar), "--labels", str(labels), "-o", str(out),
            "--patch-size", "11", "--epochs", str(TRAIN_EPOCHS), "--batch-size", str(TRAIN_BATCH),
            "--validation-fraction", "0", "--patience", "100", "--seed", "0", "--device", "cpu"]
    if processes == 1:
        cmd = [sys.executable, "-m", "rsvl.backend", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "rsvl.backend", *args, "--distributed"]
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        raise RuntimeError(f"training ({name}) failed:\n{res.stderr[-3000:]}")
    samples_per_s = read_header(str(out)).training["samples_per_s"]
    out.unlink()
    return samples_per_s


def bench_ddp(folder: Path) -> dict:
    scene = _write_training_scene(folder)
    runs = {"1": (1, 1), "2": (2, 1), "1_default_threads": (1, None)}
    rates = {k: [] for k in runs}
    for _ in range(REPEATS):
        for name, (processes, threads) in runs.items():
            rates[name].append(_train(folder, f"ddp_{name}", scene, processes, threads))
    best = {k: max(v) for k, v in rates.items()}
    return {
        "ddp_samples_per_s_1_process": best["1"], "ddp_samples_per_s_2_processes": best["2"],
        "train_samples_per_s_1_process_default_threads": best["1_default_threads"],
        "ddp_2_vs_1_speedup": best["2"] / best["1"],
        "ddp_2_processes_vs_default_threads": best["2"] / best["1_default_threads"],
        "ddp_samples_per_s_all": rates,
        "ddp_labelled_pixels": TRAIN_LABELS, "ddp_epochs": TRAIN_EPOCHS, "ddp_global_batch": TRAIN_BATCH,
    }


def table(r: dict) -> str:
    m, s = r["machine"], r["dask_side"]
    rows = [
        (f"classify {s}x{s} (64-band HSI + LiDAR), Dask 1 worker x 1 thread: pixels/s",
         f"{r['dask_pixels_per_s_1_worker']:,.0f} ({r['dask_seconds_1_worker']:.1f} s)"),
        ("... Dask 2 workers x 1 thread: pixels/s",
         f"{r['dask_pixels_per_s_2_workers']:,.0f} ({r['dask_seconds_2_workers']:.1f} s)"),
        (f"**dask_2_vs_1_speedup** (goal >= {GOAL})", f"**{r['dask_2_vs_1_speedup']:.2f}x**"),
        ("... in this process, torch's default threads: pixels/s (Dask 2 workers vs it)",
         f"{r['in_process_pixels_per_s']:,.0f} ({r['dask_2_workers_vs_in_process']:.2f}x)"),
        ("same class map (in process, 1 worker, 2 workers)", "yes" if r["dask_same_map"] else "NO"),
        (f"train {r['ddp_labelled_pixels']} pixels, 11x11, global batch {r['ddp_global_batch']}: 1 process x 1 "
         "thread, samples/s", f"{r['ddp_samples_per_s_1_process']:,.0f}"),
        ("... torchrun 2 processes x 1 thread (gloo), samples/s", f"{r['ddp_samples_per_s_2_processes']:,.0f}"),
        (f"**ddp_2_vs_1_speedup** (goal >= {GOAL})", f"**{r['ddp_2_vs_1_speedup']:.2f}x**"),
        ("... 1 process, torch's default threads: samples/s (2 processes vs it)",
         f"{r['train_samples_per_s_1_process_default_threads']:,.0f} "
         f"({r['ddp_2_processes_vs_default_threads']:.2f}x)"),
    ]
    width, vwidth = max(len(a) for a, _ in rows), max(len(b) for _, b in rows)
    lines = [
        f"rsvl scale-out bench on {m['cpu']} ({m['cores']} cores, {m['memory_gib']} GiB, torch {m['torch']}; load "
        f"average {m['load_average_at_start']:.1f} at start, {m['load_average_at_end']:.1f} at end; "
        f"{r['bench_seconds'] / 60:.1f} min)", "",
        f"| {'measure':<{width}} | {'value':<{vwidth}} |", f"|{'-' * (width + 2)}|{'-' * (vwidth + 2)}|",
    ]
    return "\n".join(lines + [f"| {a:<{width}} | {b:<{vwidth}} |" for a, b in rows])


def _stop(signum, frame):
    raise SystemExit(128 + signum)  # through the context managers: the generated scenes are deleted


def main(argv=None) -> int:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=1536, help="side of the classified scene (pixels)")
    parser.add_argument("--workdir", default=None, help="folder for the generated scenes (default: system temp)")
    parser.add_argument("--out", default=str(HERE / "scaleout.json"))
    parser.add_argument("--latest", default=str(HERE / "latest.json"),
                        help="bench/run.py's JSON, updated with the two speedups (empty: leave it)")
    args = parser.parse_args(argv)
    wall = time.perf_counter()
    results = {"machine": base.machine()}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        results.update(bench_dask(Path(tmp), args.side))
        results.update(bench_ddp(Path(tmp)))
    results["dask_goal_met"] = bool(results["dask_2_vs_1_speedup"] >= GOAL)
    results["ddp_goal_met"] = bool(results["ddp_2_vs_1_speedup"] >= GOAL)
    results["machine"]["load_average_at_end"] = os.getloadavg()[0]
    results["bench_seconds"] = time.perf_counter() - wall
    print(table(results))
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {args.out}")
    if args.latest:
        # dask_2_vs_1_speedup and ddp_2_vs_1_speedup beside bench/run.py's figures
        base.merge_into_latest(Path(args.latest), {**{k: results[k] for k in base.SCALEOUT_SPEEDUPS},
                                                   "scaleout_source": Path(args.out).name})
    return 0


if __name__ == "__main__":
    sys.exit(main())
