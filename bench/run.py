"""rsvl benchmark: dense vs per-patch inference, compute floor, training throughput and
peak memory of whole-scene classification. Prints a table and writes bench/latest.json.

    make bench        # or: .venv/bin/python bench/run.py [--small 1000] [--large 8000] [--workdir DIR]

Ratios compare two ways of doing the same work in one run; absolute numbers depend on
the machine (recorded in the JSON, with the load average: other processes on a shared
machine slow every measure, and timings take the best of several runs to damp that).
Every timed side gets the same number of repeats (``REPEATS``), measured in interleaved
rounds. The dense-vs-patch speed-up is reported with its two factors: shared
convolutions (reference dense path vs per-patch) times the dense engine's folding and
fused heads (dense engine vs reference dense path).

Compute floor: the machine's float32 GEMM peak is the best GMAC/s of square matmuls
(512, 1024, 2048; torch's default thread count). ``dense_fraction_of_gemm_peak`` is the
dense engine's GMAC/s over that peak; ``compute_floor_ratio`` is the pixels/s the peak
would reach doing the dense engine's multiply-adds per pixel over the dense pixels/s
(its inverse). The JSON keys ``matmul_pixels_per_s`` and ``matmul_gmacs_per_s`` of
earlier versions (one odd-shaped matmul) are gone: see ``gemm_*``.

Memory: each scene (``bands`` int16 HSI bands + 1 float32 LiDAR band, random values) is
classified by ``api.classify`` in a fresh subprocess whose peak RSS is recorded, next to
the RSS of the same process after importing torch/rasterio and loading the model
(``baseline``, measured in both runs; ``peak_rss_above_baseline_mb_*`` is what the
classification itself adds; ``baseline_rss_mb`` is the large run's). The large scene
needs ``large² × (2·bands + 4)`` bytes of disk in ``--workdir`` (8.4 GB for 8000).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SCALEOUT_SPEEDUPS = ("dask_2_vs_1_speedup", "ddp_2_vs_1_speedup")  # measured by bench/scaleout.py
SCALEOUT_KEYS = SCALEOUT_SPEEDUPS + ("scaleout_source",)


def merge_into_latest(latest: Path, values: dict) -> None:
    """``values`` (figures measured by another bench script) into ``latest`` beside bench/run.py's
    figures, its other keys kept; written atomically."""
    from rsvl.backend.io.atomic import atomic_path

    data = json.loads(latest.read_text()) if latest.exists() else {}
    data.update(values)
    with atomic_path(str(latest)) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2) + "\n")
    print(f"updated: {latest}")


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
    import rasterio

    mem = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "gdal": rasterio.__gdal_version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_at_start": os.getloadavg()[0]}


def paper_model(hsi_bands=64, lidar_bands=1, patch=11, embed=384, classes=6, seed=0):
    import torch

    from rsvl.backend.models.mmlgnet import MMLGNet, ModelConfig

    torch.manual_seed(seed)
    model = MMLGNet(ModelConfig(bands={"hsi": hsi_bands, "lidar": lidar_bands}, embed_dim=embed, patch_size=patch),
                    classes)
    model.class_embeddings.copy_(torch.nn.functional.normalize(torch.randn(classes, embed), dim=1))
    return model.eval()


def macs_per_pixel(model, dense: bool) -> int:
    """Multiply-adds per output pixel of the per-patch or the (reference) dense path."""
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


def folded_macs_per_pixel(model) -> int:
    """Multiply-adds per output pixel of the folded dense engine (``DenseEmbedder``):
    the convolutions, then one linear head per modality (fc and fusion folded)."""
    total = 0
    for enc in model.encoders.values():
        for (k, _pool), conv in zip(enc.plan, enc.convs):
            total += conv.in_channels * conv.out_channels * k * k
        total += enc.fc.in_features * model.fusion.out_features
    return total


REPEATS = 5  # every timed side: best of this many measurements


def time_best(fns: dict, repeats=REPEATS, min_seconds=0.5) -> dict:
    """Best time per call of each function in ``fns`` over ``repeats`` measurements (each
    at least ``min_seconds`` of calls, at least one call). The functions are measured in
    interleaved rounds (one measurement of each per round), so every side gets the same
    number of repeats and load from other processes falls on all sides alike."""
    for fn in fns.values():
        fn()  # warm-up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            runs, start = 0, time.perf_counter()
            while runs < 1 or time.perf_counter() - start < min_seconds:
                fn()
                runs += 1
            best[name] = min(best[name], (time.perf_counter() - start) / runs)
    return best


def time_it(fn, repeats=REPEATS, min_seconds=0.5):
    """Best time of ``repeats`` measurements (each at least ``min_seconds`` of calls)."""
    return time_best({"fn": fn}, repeats, min_seconds)["fn"]


def gemm_peak(sizes=(512, 1024, 2048)) -> dict:
    """The machine's float32 GEMM rate: square ``n × n`` matmuls (torch's default thread
    count, preallocated output), best of ``REPEATS`` per size; the peak is the best size."""
    import torch

    rates = gemm_rates(sizes, torch.float32)
    return {"gemm_gmacs_per_s_by_size": {str(n): r for n, r in rates.items()},
            "gemm_peak_gmacs_per_s": max(rates.values()), "gemm_threads": torch.get_num_threads()}


def gemm_rates(sizes, dtype) -> dict:
    """GMAC/s of ``n × n`` matmuls in ``dtype`` (preallocated output), best of ``REPEATS`` per size."""
    import torch

    rates = {}
    for n in sizes:
        a, b, c = (torch.randn(n, n).to(dtype) for _ in range(3))
        rates[n] = n ** 3 / time_it(lambda a=a, b=b, c=c: torch.matmul(a, b, out=c)) / 1e9
    return rates


def bench_window(side: int):
    """(the paper-sized model, a normalised ``side`` × ``side`` window of 64 HSI bands + LiDAR
    with its halo, the class texts): what the engine benches compute on."""
    model = paper_model()
    halo = model.config.patch_size // 2
    rng = np.random.default_rng(0)
    norm = {"hsi": rng.standard_normal((64, side + 2 * halo, side + 2 * halo), dtype=np.float32),
            "lidar": rng.standard_normal((1, side + 2 * halo, side + 2 * halo), dtype=np.float32)}
    return model, norm, model.class_embeddings


def gemm_peak_bf16(sizes=(512, 1024, 2048)) -> dict:
    """The same GEMM in bfloat16 (float32 accumulation inside oneDNN/cuBLAS): the limit of
    reduced-precision maps on this machine."""
    import torch

    rates = gemm_rates(sizes, torch.bfloat16)
    return {"gemm_bf16_gmacs_per_s_by_size": {str(n): r for n, r in rates.items()},
            "gemm_peak_gmacs_per_s_bf16": max(rates.values())}


def gemm_peak_int8(sizes=(512, 1024, 2048)) -> dict:
    """int8 × int8 → int32 GEMM (``torch._int_mm``, where this torch exposes it on the CPU):
    the machine's third limit. rsvl has no int8 path; the figure says what one could reach."""
    import torch

    if not hasattr(torch, "_int_mm"):
        return {"gemm_peak_gmacs_per_s_int8": None}
    rates = {}
    for n in sizes:
        a, b = (torch.randint(-8, 8, (n, n), dtype=torch.int8) for _ in range(2))
        try:
            rates[n] = n ** 3 / time_it(lambda a=a, b=b: torch._int_mm(a, b)) / 1e9
        except RuntimeError:  # not on this device / build
            return {"gemm_peak_gmacs_per_s_int8": None}
    return {"gemm_int8_gmacs_per_s_by_size": {str(n): r for n, r in rates.items()},
            "gemm_peak_gmacs_per_s_int8": max(rates.values())}


def bench_dense_bf16(side=128) -> dict:
    """The dense engine in bfloat16 (PRECISION=bfloat16) against float32 on the same window:
    pixels/s, its fraction of the bfloat16 GEMM peak, and the class-map agreement."""
    import torch

    from rsvl.backend.models.dense import DenseEmbedder
    from rsvl.backend.runtime.precision import agreement, native_bfloat16

    model, norm, text = bench_window(side)
    f32, bf16 = DenseEmbedder(model), DenseEmbedder(model, dtype=torch.bfloat16)
    a, b = f32.similarity(norm, text), bf16.similarity(norm, text)
    t = time_best({"f32": lambda: f32.similarity(norm, text), "bf16": lambda: bf16.similarity(norm, text)})
    peak = gemm_peak_bf16()
    pixels = side * side
    ok, detail = agreement(a.flatten(1).numpy(), b.flatten(1).numpy(), float(model.scale().detach()))
    return {"dense_bf16_pixels_per_s": pixels / t["bf16"], "dense_bf16_vs_fp32": t["f32"] / t["bf16"],
            "dense_bf16_same_class": float((a.argmax(0) == b.argmax(0)).float().mean()),
            "dense_bf16_max_abs_diff": float((a - b).abs().max()), "dense_bf16_agreement_ok": bool(ok),
            "dense_fraction_of_bf16_peak": pixels * folded_macs_per_pixel(model) / t["bf16"] / 1e9
            / peak["gemm_peak_gmacs_per_s_bf16"],
            "bf16_native": native_bfloat16("cpu")[1], **peak}


def bench_dense_vs_patch(side=128):
    """The two inference methods of ``run_inference`` on one normalised window (plus
    halo): similarities of every pixel to the class texts, so the outputs are equal."""
    import torch

    from rsvl.backend.mapping.inference import embed_patches
    from rsvl.backend.models.dense import DenseEmbedder

    model, norm, text = bench_window(side)
    halo = model.config.patch_size // 2
    engine = DenseEmbedder(model)

    def dense():
        return engine.similarity(norm, text)

    def reference_dense():  # MMLGNet.embed_dense: à trous, unfolded, whole window at once
        with torch.no_grad():
            x = {m: torch.from_numpy(a)[None] for m, a in norm.items()}
            return torch.einsum("dhw,kd->khw", model.embed_dense(x)[0], text)

    def patch():
        with torch.no_grad():
            return torch.einsum("dhw,kd->khw", embed_patches(model, norm, halo, "cpu", 4096), text)

    d, r, pt = dense(), reference_dense(), patch()
    max_diff = float((d - pt).abs().max())
    same_classes = bool(torch.equal(d.argmax(0), pt.argmax(0)))
    t = time_best({"dense": dense, "reference": reference_dense, "patch": patch})
    t_dense, t_ref, t_patch = t["dense"], t["reference"], t["patch"]
    pixels = side * side
    macs = folded_macs_per_pixel(model)
    gemm = gemm_peak()
    dense_gmacs = pixels * macs / t_dense / 1e9
    # Compute floor: the pixels/s the machine's best float32 GEMM would reach doing the
    # dense engine's multiply-adds per pixel.
    floor_pixels_per_s = gemm["gemm_peak_gmacs_per_s"] * 1e9 / macs
    return {
        "pixels": pixels, "timing_repeats": REPEATS,
        "dense_pixels_per_s": pixels / t_dense, "patch_pixels_per_s": pixels / t_patch,
        "reference_dense_pixels_per_s": pixels / t_ref,
        "dense_vs_patch_speedup": t_patch / t_dense,
        # its two factors (product = dense_vs_patch_speedup)
        "shared_convolutions_speedup": t_patch / t_ref,
        "folding_and_fused_heads_speedup": t_ref / t_dense,
        "max_abs_diff": max_diff, "same_class_map": same_classes,
        "max_abs_diff_reference_dense": float((r - pt).abs().max()),
        "macs_per_pixel_dense": macs, "macs_per_pixel_reference_dense": macs_per_pixel(model, dense=True),
        "macs_per_pixel_patch": macs_per_pixel(model, dense=False),
        "dense_gmacs_per_s": dense_gmacs, **gemm,
        "dense_fraction_of_gemm_peak": dense_gmacs / gemm["gemm_peak_gmacs_per_s"],
        "gemm_peak_pixels_per_s": floor_pixels_per_s,
        "compute_floor_ratio": floor_pixels_per_s / (pixels / t_dense),
    }


def bench_training(n=2048, epochs=2):
    import torch

    from rsvl.backend.runtime.jobs import Job
    from rsvl.backend.training.loop import TrainSettings, train

    rng = np.random.default_rng(0)
    patches = {"hsi": rng.standard_normal((n, 64, 11, 11), dtype=np.float32),
               "lidar": rng.standard_normal((n, 1, 11, 11), dtype=np.float32)}
    y = rng.integers(0, 6, n)
    rates = {}
    # rsvl:train's PRECISION (the forward pass in autocast), interleaved, best of three: the
    # first run in a process also pays for importing torch._dynamo (torch's optimisers do) and
    # creating the oneDNN primitives, which would count against whichever runs first.
    for _ in range(3):
        for precision in ("float32", "bfloat16"):
            torch.manual_seed(0)
            model = paper_model()
            out = train(model, patches, y, TrainSettings(epochs=epochs, validation_fraction=0.0, device="cpu",
                                                         precision=precision), torch.device("cpu"), Job())
            rates[precision] = max(rates.get(precision, 0.0), out.samples_per_s)
    return {"train_samples_per_s": rates["float32"], "train_samples_per_s_bf16": rates["bfloat16"],
            "train_bf16_vs_fp32": rates["bfloat16"] / rates["float32"]}


def bench_zeroshot(batch: int = 8, agreement_batches: int = 4) -> dict:
    """Llama3-MS-CLIP's image tower (ViT-B-16, 10 bands, 224 px; random weights) on CPU in
    float32: windows/s, and the same against the compute floor (its multiply-adds, counted
    by torch's FlopCounterMode, at the float32 GEMM peak of this run); cast to bfloat16
    (PRECISION=bfloat16): windows/s, the embeddings' smallest cosine with float32's and how
    often the best of six prompts (its text tower, float32) stays the same over
    ``agreement_batches`` batches of windows."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from rsvl.backend.foundation.checkpoint import build_model
    from rsvl.backend.foundation.presets import PRESETS

    model = build_model(PRESETS["llama3-ms-clip"])
    x = torch.randn(batch, 10, 224, 224)
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            model.encode_image(x)
        macs_per_tile = counter.get_total_flops() / 2 / batch

        def run():
            model.encode_image(x)

        seconds = time_it(run, repeats=3, min_seconds=0.0)
        # PRECISION=bfloat16: the image tower cast once (as FoundationModel.use_precision does)
        import copy

        visual32 = model.visual
        visual16 = copy.deepcopy(visual32).to(torch.bfloat16)
        model.visual = visual16
        xb = x.bfloat16()

        def run_bf16():
            model.encode_image(xb)

        seconds_bf16 = time_it(run_bf16, repeats=3, min_seconds=0.0)
        import open_clip

        prompts = ["water", "forest", "a field", "buildings", "a road", "bare soil"]
        text = torch.nn.functional.normalize(model.encode_text(open_clip.get_tokenizer("ViT-B-16")(prompts)), dim=-1)
        same, cosines = [], []
        torch.manual_seed(1)
        for xa in [x] + [torch.randn(batch, 10, 224, 224) for _ in range(agreement_batches - 1)]:
            model.visual = visual32
            r32 = torch.nn.functional.normalize(model.encode_image(xa), dim=-1)
            model.visual = visual16
            r16 = torch.nn.functional.normalize(model.encode_image(xa.bfloat16()).float(), dim=-1)
            cosines.append((r32 * r16).sum(-1))
            same.append((r32 @ text.t()).argmax(-1) == (r16 @ text.t()).argmax(-1))
    return {"zeroshot_tiles_per_s": batch / seconds, "zeroshot_macs_per_tile": macs_per_tile,
            "zeroshot_tiles_per_s_bf16": batch / seconds_bf16,
            "zeroshot_bf16_min_cosine": float(torch.cat(cosines).min()),
            "zeroshot_bf16_same_best_prompt": float(torch.cat(same).float().mean()),
            "zeroshot_bf16_windows_compared": int(torch.cat(same).numel())}


# Peak RSS from VmHWM: getrusage's ru_maxrss survives fork+exec on Linux and would report
# the (bigger) parent bench process.
CHILD = r"""
import json, sys, time
import rasterio, torch
from rsvl.backend import api
from rsvl.backend.models.modelfile import load_model
from rsvl.backend.io.raster import LayerSpec
def hwm_mb():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) / 1024
def rchar():
    for line in open('/proc/self/io'):
        if line.startswith('rchar:'):
            return int(line.split()[1])
load_model(sys.argv[1], torch.device('cpu'))
baseline = hwm_mb()
t = time.perf_counter()
before = rchar()
api.classify(sys.argv[1], [LayerSpec(sys.argv[2], 'hsi'), LayerSpec(sys.argv[3], 'lidar')], sys.argv[4], device='cpu',
             precision='float32')  # like for like with dense_pixels_per_s (PRECISION auto may pick bfloat16)
print(json.dumps({'seconds': time.perf_counter() - t, 'baseline_rss_mb': baseline, 'peak_rss_mb': hwm_mb(),
                  'bytes_read': rchar() - before}))
"""

# File layouts of the read-amplification table: GeoTIFF creation options of the 64-band
# int16 HSI (the LiDAR band beside it is always 512-tiled).
LAYOUTS = {
    "pixel-interleaved, striped": dict(interleave="pixel"),
    "band-interleaved, striped": dict(interleave="band"),
    "pixel-interleaved, tiled 256": dict(interleave="pixel", tiled=True, blockxsize=256, blockysize=256),
    "pixel-interleaved, tiled 512": dict(interleave="pixel", tiled=True, blockxsize=512, blockysize=512),
    "band-interleaved, tiled 512": dict(interleave="band", tiled=True, blockxsize=512, blockysize=512),
    "pixel-interleaved, striped, deflate": dict(interleave="pixel", compress="deflate"),
    "band-interleaved, striped, deflate": dict(interleave="band", compress="deflate"),
    "pixel-interleaved, tiled 256, deflate": dict(interleave="pixel", tiled=True, blockxsize=256, blockysize=256,
                                                  compress="deflate"),
    "band-interleaved, tiled 512, deflate": dict(interleave="band", tiled=True, blockxsize=512, blockysize=512,
                                                 compress="deflate"),
}
READ_AMPLIFICATION_GOAL = 1.3


def write_scene(folder: Path, side: int, bands: int = 64, layout: dict = None, tag: str = ""):
    """A generated int16 HSI (``bands``; pixel-interleaved, 512-tiled, uncompressed unless
    ``layout`` says otherwise) + float32 LiDAR scene, written 512 × 512 pixels at a time."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    hsi, lidar = folder / f"hsi_{side}{tag}.tif", folder / f"lidar_{side}{tag}.tif"
    common = dict(driver="GTiff", width=side, height=side, crs="EPSG:32633", transform=from_origin(0, side, 1, 1),
                  BIGTIFF="IF_SAFER")
    tiled = dict(tiled=True, blockxsize=512, blockysize=512)
    rng = np.random.default_rng(0)
    with rasterio.open(hsi, "w", count=bands, dtype="int16", nodata=-1, **common, **(layout or tiled)) as h, \
            rasterio.open(lidar, "w", count=1, dtype="float32", **common, **tiled) as d:
        for r in range(0, side, 512):
            for c in range(0, side, 512):
                w = Window(c, r, min(512, side - c), min(512, side - r))
                h.write(rng.integers(0, 4000, (bands, w.height, w.width), dtype=np.int16), window=w)
                d.write(rng.normal(300, 10, (1, w.height, w.width)).astype(np.float32), window=w)
    return hsi, lidar


def _save_bench_model(folder: Path) -> Path:
    from rsvl.backend.io.labels import ClassInfo
    from rsvl.backend.io.raster import BandStats
    from rsvl.backend.models.modelfile import ModelHeader, save_model

    model = paper_model()
    header = ModelHeader(config=model.config, band_names={"hsi": [f"b{i}" for i in range(64)], "lidar": ["dsm"]},
                         stats={"hsi": BandStats([2000.0] * 64, [1000.0] * 64), "lidar": BandStats([300.0], [10.0])},
                         classes=[ClassInfo(i + 1, f"class {i}", (i * 40, 0, 0)) for i in range(6)],
                         prompt_template="{}", text_encoder="builtin:all-MiniLM-L6-v2")
    model_path = folder / "model.safetensors"
    save_model(str(model_path), model, header)
    return model_path


def _classify_child(model_path: Path, hsi: Path, lidar: Path, classes: Path) -> dict:
    """``api.classify`` in a fresh process: seconds, peak and baseline RSS, bytes read
    (``rchar``: every read() call, page cache or not) and the inputs' size."""
    try:
        res = subprocess.run([sys.executable, "-c", CHILD, str(model_path), str(hsi), str(lidar), str(classes)],
                             capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"classifying {hsi.name} failed:\n{res.stderr[-3000:]}")
        out = json.loads(res.stdout.strip().splitlines()[-1])
        out["input_bytes"] = hsi.stat().st_size + lidar.stat().st_size
        return out
    finally:
        for p in (hsi, lidar, classes, Path(str(classes) + ".aux.xml")):
            p.unlink(missing_ok=True)


def bench_read_amplification(side: int, folder: Path) -> dict:
    """Bytes read by a whole-scene classify over the inputs' size, per HSI file layout."""
    model_path = _save_bench_model(folder)
    out = {}
    for i, (name, layout) in enumerate(LAYOUTS.items()):
        hsi, lidar = write_scene(folder, side, layout=layout, tag=f"_layout{i}")
        r = _classify_child(model_path, hsi, lidar, folder / f"classes_layout{i}.tif")
        out[name] = r["bytes_read"] / r["input_bytes"]
    return out


def bench_memory(sides, folder: Path):
    model_path = _save_bench_model(folder)
    out = {}
    for side in sides:
        hsi, lidar = write_scene(folder, side)
        out[side] = _classify_child(model_path, hsi, lidar, folder / f"classes_{side}.tif")
    return out


def _stop(signum, frame):
    """SIGTERM/SIGHUP end the bench like Ctrl-C does: through the context managers, so the
    generated scenes (8.4 GB for 8000 × 8000) are deleted."""
    raise SystemExit(128 + signum)


def main(argv=None):
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=1000, help="side of the small generated scene (pixels)")
    parser.add_argument("--large", type=int, default=8000, help="side of the large generated scene (pixels)")
    parser.add_argument("--layout-side", type=int, default=640,
                        help="side of the scenes of the read-amplification table (pixels; 0 skips it)")
    parser.add_argument("--workdir", default=None, help="folder for the generated scenes (default: system temp)")
    parser.add_argument("--out", default=str(HERE / "latest.json"))
    args = parser.parse_args(argv)
    wall = time.perf_counter()
    results = {"machine": machine()}
    results.update(bench_dense_vs_patch())
    results.update(bench_dense_bf16())
    results.update(gemm_peak_int8())
    results.update(bench_training())
    results.update(bench_zeroshot())
    floor = results["gemm_peak_gmacs_per_s"] * 1e9 / results["zeroshot_macs_per_tile"]
    results["zeroshot_floor_tiles_per_s"] = floor
    results["zeroshot_fraction_of_floor"] = results["zeroshot_tiles_per_s"] / floor
    results["zeroshot_fraction_of_bf16_peak"] = (results["zeroshot_tiles_per_s_bf16"] * results["zeroshot_macs_per_tile"]
                                                 / (results["gemm_peak_gmacs_per_s_bf16"] * 1e9))
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        mem = bench_memory([args.small, args.large], Path(tmp))
        layouts = bench_read_amplification(args.layout_side, Path(tmp)) if args.layout_side else {}
    small, large = mem[args.small], mem[args.large]
    results.update({
        "peak_rss_mb_small": small["peak_rss_mb"], "peak_rss_mb_large": large["peak_rss_mb"],
        "baseline_rss_mb": large["baseline_rss_mb"],
        "baseline_rss_mb_small": small["baseline_rss_mb"], "baseline_rss_mb_large": large["baseline_rss_mb"],
        "peak_rss_above_baseline_mb_small": small["peak_rss_mb"] - small["baseline_rss_mb"],
        "peak_rss_above_baseline_mb_large": large["peak_rss_mb"] - large["baseline_rss_mb"],
        "small_side": args.small, "large_side": args.large,
        "peak_rss_large_vs_small": large["peak_rss_mb"] / small["peak_rss_mb"],
        "classify_seconds_small": small["seconds"], "classify_seconds_large": large["seconds"],
        "classify_pixels_per_s_small": args.small ** 2 / small["seconds"],
        "classify_pixels_per_s_large": args.large ** 2 / large["seconds"],
        "read_amplification_small": small["bytes_read"] / small["input_bytes"],
        "read_amplification_large": large["bytes_read"] / large["input_bytes"],
        "layout_side": args.layout_side,
        "read_amplification": layouts,
    })
    results["dense_vs_classify_rate_large"] = results["dense_pixels_per_s"] / results["classify_pixels_per_s_large"]
    results["read_amplification_goal_met"] = bool(
        max([results["read_amplification_large"], *layouts.values()]) <= READ_AMPLIFICATION_GOAL)
    results["classify_rate_goal_met"] = bool(results["dense_vs_classify_rate_large"] <= 1.3)
    # Reading each input block once holds about two block rows of each input (the row
    # buffer), capped by RSVL_READ_BUFFER_MB (column bands past it): the part of memory that
    # may grow from the small scene to the large one. Everything else stays within 20 %.
    from rsvl.backend.io.raster import read_buffer_bytes

    results["read_buffer_mb"] = read_buffer_bytes() / 2**20
    results["memory_goal_met"] = bool(
        results["peak_rss_mb_large"] < 2048
        and results["peak_rss_mb_large"] <= 1.2 * results["peak_rss_mb_small"] + results["read_buffer_mb"])
    results["machine"]["load_average_at_end"] = os.getloadavg()[0]
    results["bench_seconds"] = time.perf_counter() - wall
    print(table(results))
    out = Path(args.out)
    if out.exists():  # bench/scaleout.py's and bench/explore.py's figures (measured there) stay until they run again
        previous = json.loads(out.read_text())
        results.update({k: previous[k] for k in SCALEOUT_KEYS if k in previous})
        results.update({k: v for k, v in previous.items() if k.startswith("explore_")})
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {args.out}")
    return 0


def table(r: dict) -> str:
    """The results as a Markdown table (what docs/benchmarks.md shows)."""
    m = r["machine"]
    s, lg = r["small_side"], r["large_side"]
    rows = [
        ("dense pixels/s (64-band HSI + LiDAR, 11x11 patches)", f"{r['dense_pixels_per_s']:,.0f}"),
        ("reference dense path (à trous, unfolded) pixels/s", f"{r['reference_dense_pixels_per_s']:,.0f}"),
        ("per-patch pixels/s (same output)", f"{r['patch_pixels_per_s']:,.0f}"),
        ("**dense_vs_patch_speedup** (goal >= 10)", f"**{r['dense_vs_patch_speedup']:.1f}x**"),
        ("= shared convolutions (reference dense vs per-patch)", f"{r['shared_convolutions_speedup']:.1f}x"),
        ("x folding and fused heads (dense engine vs reference dense)",
         f"{r['folding_and_fused_heads_speedup']:.1f}x"),
        ("max abs difference dense vs per-patch (similarities); same class map",
         f"{r['max_abs_diff']:.1e}; {'yes' if r['same_class_map'] else 'NO'}"),
        ("multiply-adds per pixel: dense engine / reference dense / per-patch",
         f"{r['macs_per_pixel_dense'] / 1e3:,.0f} k / {r['macs_per_pixel_reference_dense'] / 1e3:,.0f} k / "
         f"{r['macs_per_pixel_patch'] / 1e6:.2f} M"),
        ("float32 GEMM GMAC/s, n x n matmul: " + " / ".join(f"n={n}" for n in r["gemm_gmacs_per_s_by_size"]),
         " / ".join(f"{g:.0f}" for g in r["gemm_gmacs_per_s_by_size"].values())),
        ("GMAC/s: dense engine / float32 GEMM peak", f"{r['dense_gmacs_per_s']:.0f} / {r['gemm_peak_gmacs_per_s']:.0f}"),
        ("**dense_fraction_of_gemm_peak**", f"**{r['dense_fraction_of_gemm_peak']:.0%}**"),
        ("**compute_floor_ratio** (GEMM-peak pixels/s / dense pixels/s, goal <= 3)",
         f"**{r['compute_floor_ratio']:.2f}**"),
        ("**train_samples_per_s**", f"**{r['train_samples_per_s']:,.0f}**"),
        ("**zeroshot_tiles_per_s** (Llama3-MS-CLIP image tower: ViT-B-16, 10 bands, 224 px, CPU float32)",
         f"**{r['zeroshot_tiles_per_s']:.1f}**"),
        ("zero-shot windows/s at the GEMM peak (its multiply-adds per window)",
         f"{r['zeroshot_floor_tiles_per_s']:.1f} ({r['zeroshot_macs_per_tile'] / 1e9:.1f} G multiply-adds)"),
        ("**zeroshot_fraction_of_floor** (goal >= 0.5)", f"**{r['zeroshot_fraction_of_floor']:.0%}**"),
        (f"baseline RSS (torch imported, model loaded), {s}x{s} / {lg}x{lg} run",
         f"{r['baseline_rss_mb_small']:,.0f} / {r['baseline_rss_mb_large']:,.0f} MB"),
        (f"**peak_rss_mb_small** (classify {s}x{s})", f"**{r['peak_rss_mb_small']:,.0f} MB**"),
        (f"**peak_rss_mb_large** (classify {lg}x{lg}; goal < 2048 and <= 1.2x small + read buffer "
         f"{r['read_buffer_mb']:.0f} MB)",
         f"**{r['peak_rss_mb_large']:,.0f} MB** ({r['peak_rss_large_vs_small']:.2f}x small)"),
        (f"**peak_rss_above_baseline_mb**, {s}x{s} / {lg}x{lg}",
         f"**{r['peak_rss_above_baseline_mb_small']:,.0f} / {r['peak_rss_above_baseline_mb_large']:,.0f} MB**"),
        (f"whole-scene classify pixels/s, {s}x{s} / {lg}x{lg} (read, compute, write)",
         f"{r['classify_pixels_per_s_small']:,.0f} / {r['classify_pixels_per_s_large']:,.0f}"),
        (f"classify wall time, {s}x{s} / {lg}x{lg}", f"{r['classify_seconds_small']:.1f} / {r['classify_seconds_large']:.1f} s"),
        (f"**dense_vs_classify_rate_large** (dense pixels/s over whole-scene {lg}x{lg} pixels/s; goal <= 1.3)",
         f"**{r['dense_vs_classify_rate_large']:.2f}**"),
        (f"**read_amplification** (bytes read / input size), {s}x{s} / {lg}x{lg} bench scene (goal <= 1.3)",
         f"**{r['read_amplification_small']:.2f} / {r['read_amplification_large']:.2f}**"),
    ]
    if "dense_bf16_vs_fp32" in r:  # PRECISION (runs from before it lack these)
        rows += [
            ("bfloat16 GEMM GMAC/s (peak) / float32", f"{r['gemm_peak_gmacs_per_s_bf16']:.0f} / "
                                                       f"{r['gemm_peak_gmacs_per_s']:.0f} ({r['bf16_native']})"),
            ("**dense_bf16_vs_fp32** (dense engine, PRECISION=bfloat16 over float32)",
             f"**{r['dense_bf16_vs_fp32']:.2f}x** ({r['dense_bf16_pixels_per_s']:,.0f} px/s)"),
            ("dense_bf16_same_class (class map of the bench window against float32)",
             f"{r['dense_bf16_same_class']:.4%}"),
            ("dense_fraction_of_bf16_peak", f"{r['dense_fraction_of_bf16_peak']:.0%}"),
            ("**zeroshot_tiles_per_s_bf16** (the same ViT cast to bfloat16; min cosine with float32)",
             f"**{r['zeroshot_tiles_per_s_bf16']:.1f}** ({r['zeroshot_bf16_min_cosine']:.5f})"),
        ]
    if "train_bf16_vs_fp32" in r:  # rsvl:train's PRECISION, the ViT's agreement, int8 (runs from before lack these)
        int8 = r.get("gemm_peak_gmacs_per_s_int8")
        rows += [
            ("dense_bf16_max_abs_diff (similarities against float32)", f"{r['dense_bf16_max_abs_diff']:.1e}"),
            ("zeroshot_bf16_same_best_prompt (of six prompts, windows compared)",
             f"{r['zeroshot_bf16_same_best_prompt']:.1%} ({r['zeroshot_bf16_windows_compared']})"),
            ("zeroshot_fraction_of_bf16_peak", f"{r['zeroshot_fraction_of_bf16_peak']:.0%}"),
            ("**train_samples_per_s_bf16** (rsvl:train PRECISION=bfloat16; over float32)",
             f"**{r['train_samples_per_s_bf16']:,.0f}** ({r['train_bf16_vs_fp32']:.2f}x)"),
            ("int8 GEMM GMAC/s, peak (torch._int_mm; rsvl has no int8 path)",
             "not exposed" if int8 is None else f"{int8:.0f}"),
        ]
    side = r.get("layout_side")
    rows += [(f"read_amplification, {side}x{side} 64-band int16 HSI {name}", f"{v:.2f}")
             for name, v in r.get("read_amplification", {}).items()]
    width = max(len(a) for a, _ in rows)
    vwidth = max(len(b) for _, b in rows)
    lines = [
        f"rsvl bench on {m['cpu']} ({m['cores']} cores, {m['memory_gib']} GiB, torch {m['torch']}, GDAL {m['gdal']}; "
        f"load average {m['load_average_at_start']:.1f} at start, {m['load_average_at_end']:.1f} at end; "
        f"{r['bench_seconds'] / 60:.1f} min)",
        "",
        f"| {'measure':<{width}} | {'value':<{vwidth}} |",
        f"|{'-' * (width + 2)}|{'-' * (vwidth + 2)}|",
    ]
    lines += [f"| {a:<{width}} | {b:<{vwidth}} |" for a, b in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
