"""rsvl benchmark: dense vs per-patch inference, compute floor, training throughput and
peak memory of whole-scene classification. Prints a table and writes bench/latest.json.

    make bench                    # or: .venv/bin/python bench/run.py [--large 8000]

Ratios compare two ways of doing the same work in one run; absolute numbers depend on
the machine (recorded in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def paper_model(hsi_bands=64, lidar_bands=1, patch=11, embed=384, classes=6, seed=0):
    import torch

    from rsvl.backend.mmlgnet import MMLGNet, ModelConfig

    torch.manual_seed(seed)
    model = MMLGNet(ModelConfig(bands={"hsi": hsi_bands, "lidar": lidar_bands}, embed_dim=embed, patch_size=patch),
                    classes)
    model.class_embeddings.copy_(torch.nn.functional.normalize(torch.randn(classes, embed), dim=1))
    return model.eval()


def macs_per_pixel(model, dense: bool) -> int:
    """Multiply-adds per output pixel of the per-patch or the dense path."""
    total = 0
    for enc in model.encoders.values():
        size = enc.patch_size
        for (k, pool), conv in zip(enc.plan, enc.convs):
            out = size - k + 1
            per_position = conv.in_channels * conv.out_channels * k * k
            total += per_position * (1 if dense else out * out)
            size = out // 2 if pool else out
        total += enc.fc.in_features * enc.fc.out_features
    total += model.fusion.in_features * model.fusion.out_features
    return total


def time_it(fn, min_seconds=1.0, min_runs=2):
    fn()  # warm-up
    runs, start = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - start < min_seconds:
        fn()
        runs += 1
    return (time.perf_counter() - start) / runs


def bench_dense_vs_patch(side=96):
    import torch

    model = paper_model()
    halo = model.config.patch_size // 2
    g = torch.Generator().manual_seed(0)
    window = {"hsi": torch.randn(1, 64, side + 2 * halo, side + 2 * halo, generator=g),
              "lidar": torch.randn(1, 1, side + 2 * halo, side + 2 * halo, generator=g)}
    p = model.config.patch_size

    def dense():
        with torch.no_grad():
            return model.embed_dense(window)

    def patch():
        with torch.no_grad():
            out = []
            for r0 in range(0, side, 16):  # 16 rows of pixels per batch (1536 patches)
                batch = {m: x[0, :, r0:r0 + 16 + p - 1].unfold(1, p, 1).unfold(2, p, 1).permute(1, 2, 0, 3, 4)
                         .reshape(-1, x.shape[1], p, p) for m, x in window.items()}
                out.append(model.embed(batch))
            return torch.cat(out)

    d, pt = dense()[0], patch()
    max_diff = float((d.flatten(1).t() - pt).abs().max())
    t_dense, t_patch = time_it(dense), time_it(patch)
    pixels = side * side
    macs = macs_per_pixel(model, dense=True)
    # Compute floor: a plain float32 matmul with the same multiply-add count per pixel.
    a = torch.randn(pixels, 1024)
    b = torch.randn(1024, max(1, macs // 1024))
    t_mm = time_it(lambda: a @ b)
    return {
        "pixels": pixels, "dense_pixels_per_s": pixels / t_dense, "patch_pixels_per_s": pixels / t_patch,
        "dense_vs_patch_speedup": t_patch / t_dense, "max_abs_diff": max_diff,
        "macs_per_pixel_dense": macs, "macs_per_pixel_patch": macs_per_pixel(model, dense=False),
        "matmul_pixels_per_s": pixels / t_mm, "compute_floor_ratio": (pixels / t_mm) / (pixels / t_dense),
    }


def bench_training(n=2048, epochs=2):
    import torch

    from rsvl.backend.jobs import Job
    from rsvl.backend.training import TrainSettings, train

    model = paper_model()
    rng = np.random.default_rng(0)
    patches = {"hsi": rng.standard_normal((n, 64, 11, 11), dtype=np.float32),
               "lidar": rng.standard_normal((n, 1, 11, 11), dtype=np.float32)}
    y = rng.integers(0, 6, n)
    out = train(model, patches, y, TrainSettings(epochs=epochs, validation_fraction=0.0, device="cpu"),
                torch.device("cpu"), Job())
    return {"train_samples_per_s": out.samples_per_s}


CHILD = r"""
import json, resource, sys, time
from rsvl.backend import api
from rsvl.backend.raster import LayerSpec
t = time.perf_counter()
api.classify(sys.argv[1], [LayerSpec(sys.argv[2], 'hsi'), LayerSpec(sys.argv[3], 'lidar')], sys.argv[4], device='cpu')
print(json.dumps({'seconds': time.perf_counter() - t, 'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_scene(folder: Path, side: int, bands: int = 64):
    """A generated int16 HSI (``bands``) + float32 LiDAR scene, written block by block."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    hsi, lidar = folder / f"hsi_{side}.tif", folder / f"lidar_{side}.tif"
    common = dict(driver="GTiff", width=side, height=side, crs="EPSG:32633", transform=from_origin(0, side, 1, 1),
                  tiled=True, blockxsize=512, blockysize=512)
    rng = np.random.default_rng(0)
    with rasterio.open(hsi, "w", count=bands, dtype="int16", nodata=-1, **common) as h, \
            rasterio.open(lidar, "w", count=1, dtype="float32", **common) as d:
        for r in range(0, side, 512):
            for c in range(0, side, 512):
                w = Window(c, r, min(512, side - c), min(512, side - r))
                h.write(rng.integers(0, 4000, (bands, w.height, w.width), dtype=np.int16), window=w)
                d.write(rng.normal(300, 10, (1, w.height, w.width)).astype(np.float32), window=w)
    return hsi, lidar


def bench_memory(sides, folder: Path):
    from rsvl.backend.labels import ClassInfo
    from rsvl.backend.modelfile import ModelHeader, save_model
    from rsvl.backend.raster import BandStats

    model = paper_model()
    header = ModelHeader(config=model.config, band_names={"hsi": [f"b{i}" for i in range(64)], "lidar": ["dsm"]},
                         stats={"hsi": BandStats([2000.0] * 64, [1000.0] * 64), "lidar": BandStats([300.0], [10.0])},
                         classes=[ClassInfo(i + 1, f"class {i}", (i * 40, 0, 0)) for i in range(6)],
                         prompt_template="{}", text_encoder="builtin:all-MiniLM-L6-v2")
    model_path = folder / "model.safetensors"
    save_model(str(model_path), model, header)
    out = {}
    for side in sides:
        hsi, lidar = write_scene(folder, side)
        res = subprocess.run([sys.executable, "-c", CHILD, str(model_path), str(hsi), str(lidar),
                              str(folder / f"classes_{side}.tif")], capture_output=True, text=True, check=True)
        out[side] = json.loads(res.stdout.strip().splitlines()[-1])
        for p in (hsi, lidar, folder / f"classes_{side}.tif"):
            p.unlink()
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=1000, help="side of the small generated scene (pixels)")
    parser.add_argument("--large", type=int, default=2000, help="side of the large generated scene (pixels)")
    parser.add_argument("--out", default=str(HERE / "latest.json"))
    args = parser.parse_args(argv)
    results = {"machine": machine()}
    results.update(bench_dense_vs_patch())
    results.update(bench_training())
    with tempfile.TemporaryDirectory() as tmp:
        mem = bench_memory([args.small, args.large], Path(tmp))
    results.update({
        "peak_rss_mb_small": mem[args.small]["peak_rss_mb"], "peak_rss_mb_large": mem[args.large]["peak_rss_mb"],
        "small_side": args.small, "large_side": args.large,
        "classify_pixels_per_s_large": args.large ** 2 / mem[args.large]["seconds"],
    })
    rows = [
        ("dense pixels/s (64-band HSI + LiDAR, 11x11)", f"{results['dense_pixels_per_s']:.0f}"),
        ("per-patch pixels/s (same output)", f"{results['patch_pixels_per_s']:.0f}"),
        ("dense_vs_patch_speedup", f"{results['dense_vs_patch_speedup']:.1f}x"),
        ("max |dense - patch| (embeddings)", f"{results['max_abs_diff']:.2e}"),
        ("multiply-adds per pixel: dense / patch",
         f"{results['macs_per_pixel_dense'] / 1e6:.2f} M / {results['macs_per_pixel_patch'] / 1e6:.2f} M"),
        ("compute_floor_ratio (matmul rate / dense rate)", f"{results['compute_floor_ratio']:.2f}"),
        ("train_samples_per_s", f"{results['train_samples_per_s']:.0f}"),
        (f"peak_rss_mb_small ({args.small}x{args.small})", f"{results['peak_rss_mb_small']:.0f}"),
        (f"peak_rss_mb_large ({args.large}x{args.large})", f"{results['peak_rss_mb_large']:.0f}"),
        ("whole-scene classify pixels/s (large)", f"{results['classify_pixels_per_s_large']:.0f}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"rsvl bench on {results['machine']['cpu']} ({results['machine']['cores']} cores, torch "
          f"{results['machine']['torch']})")
    print(f"| {'measure':<{width}} | value |\n|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
