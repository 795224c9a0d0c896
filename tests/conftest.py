"""Shared fixtures: seeded synthetic co-registered HSI / LiDAR / SAR / MS scenes written
with rasterio into tmp_path (``make_scene``: classes separable by any modality;
``make_fusion_scene``: classes only the fusion of HSI and LiDAR separates), vector labels,
and tiny random text encoders saved to disk and loaded through the same loader users hit.
Never the network."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

# One torch (OpenMP) thread per test process, and in the CLI and qgis_process subprocesses
# that inherit it: the suite runs on small shared machines (2 cores, often beside another
# job), where OpenMP's waiting threads make small trainings ten times slower once the cores
# are oversubscribed. Set OMP_NUM_THREADS to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Text embeddings cached on disk (LLM encoders, pretrained checkpoints' prompts) go to a
# folder of this run, not the user's ~/.cache (tests that check the cache set their own).
if "RSVL_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["RSVL_CACHE_DIR"] = tempfile.mkdtemp(prefix="rsvl-test-cache-")

# Maps in float32 whatever the machine: PRECISION auto would take bfloat16 on a CPU with
# AVX-512-BF16 or AMX, and the suite compares maps to float32 references to 1e-5. The tests of
# the precision choice (tests/test_backend_precision.py) unset it.
os.environ.setdefault("RSVL_PRECISION", "float32")

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
UTM = CRS.from_epsg(32633)
CLASS_NAMES = ["water", "forest", "buildings", "grassland"]
CLASS_COLOURS = {1: (0, 0, 255), 2: (0, 100, 0), 3: (200, 0, 0), 4: (150, 220, 50)}


@dataclass
class Scene:
    root: Path
    truth: np.ndarray  # (H, W) class codes 1..4
    transform: object
    crs: CRS
    paths: Dict[str, Path] = field(default_factory=dict)
    labels: Optional[Path] = None
    polygons: Optional[Path] = None
    class_names: List[str] = field(default_factory=lambda: list(CLASS_NAMES))  # codes 1..N

    def held_out(self) -> np.ndarray:
        """(H, W) mask of the pixels not in the training labels (a test set)."""
        with rasterio.open(self.labels) as ds:
            return ds.read(1) == 0


def class_map(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Blocky class regions (Voronoi cells of random seeds) so patches carry context."""
    n_seeds = max(8, (height * width) // 120)
    seeds = rng.uniform(0, [height, width], size=(n_seeds, 2))
    classes = np.arange(n_seeds) % 4 + 1
    rr, cc = np.mgrid[0:height, 0:width]
    d = (rr[..., None] - seeds[:, 0]) ** 2 + (cc[..., None] - seeds[:, 1]) ** 2
    return classes[d.argmin(-1)].astype(np.uint8)


def spectra(n_bands: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth, physically plausible reflectance curves (0..0.6) per class (4, n_bands)."""
    wl = np.linspace(0.4, 2.4, n_bands)
    water = 0.08 * np.exp(-((wl - 0.5) / 0.15) ** 2) + 0.01
    veg = 0.05 + 0.4 / (1 + np.exp(-(wl - 0.72) / 0.02)) * np.exp(-((wl - 0.9) / 1.2) ** 2)
    built = 0.15 + 0.1 * wl
    grass = 0.6 * veg + 0.1 * (wl > 1.5)
    return np.stack([water, veg, built, grass]) * (1 + 0.02 * rng.standard_normal((4, 1)))


def write_raster(path: Path, data: np.ndarray, transform, crs=UTM, nodata=None, descriptions=None, dtype=None):
    data = data if data.ndim == 3 else data[None]
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype=dtype or data.dtype.name, crs=crs, transform=transform, nodata=nodata)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data.astype(profile["dtype"]))
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
    return path


def write_labels(path: Path, codes: np.ndarray, transform, crs=UTM, names=CLASS_NAMES, colours=CLASS_COLOURS):
    from osgeo import gdal

    with rasterio.open(path, "w", driver="GTiff", width=codes.shape[1], height=codes.shape[0], count=1,
                       dtype="uint8", crs=crs, transform=transform, nodata=0) as dst:
        dst.write(codes.astype(np.uint8), 1)
        dst.write_colormap(1, {0: (0, 0, 0, 0), **{k: (*v, 255) for k, v in colours.items()}})
    ds = gdal.Open(str(path), gdal.GA_Update)
    band = ds.GetRasterBand(1)
    band.GetMetadata()
    band.SetCategoryNames(["unlabelled"] + list(names))
    band = None
    ds = None
    return path


def make_scene(root: Path, size: int = 48, seed: int = 0, hsi_bands: int = 24, label_fraction: float = 0.15,
               modalities=("hsi", "lidar", "sar", "ms")) -> Scene:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    truth = class_map(size, size, rng)
    transform = from_origin(465000.0, 5080000.0, 10.0, 10.0)
    scene = Scene(root, truth, transform, UTM)
    idx = truth.astype(int) - 1
    if "hsi" in modalities:
        s = spectra(hsi_bands, rng)
        refl = s[idx].transpose(2, 0, 1) * (1 + 0.05 * rng.standard_normal((1, size, size)))
        refl += 0.01 * rng.standard_normal(refl.shape)
        dn = np.clip(refl * 10000, 0, 32767).astype(np.int16)  # int16 DN like many HSI products
        scene.paths["hsi"] = write_raster(root / "hsi.tif", dn, transform, nodata=-1,
                                          descriptions=[f"b{i}" for i in range(hsi_bands)])
    if "lidar" in modalities:
        heights = np.array([0.0, 18.0, 9.0, 0.5])[idx] + 300 + 0.5 * rng.standard_normal((size, size))
        scene.paths["lidar"] = write_raster(root / "dsm.tif", heights.astype(np.float32), transform,
                                            nodata=-9999.0, descriptions=["dsm"])
    if "sar" in modalities:
        sigma = np.array([[-22, -28], [-8, -14], [-3, -9], [-11, -17]], dtype=np.float32)[idx].transpose(2, 0, 1)
        sigma += 1.5 * rng.standard_normal(sigma.shape).astype(np.float32)
        scene.paths["sar"] = write_raster(root / "sar.tif", sigma, transform, nodata=None,
                                          descriptions=["VV", "VH"])
    if "ms" in modalities:
        s = spectra(6, rng)
        refl = (s[idx].transpose(2, 0, 1) + 0.01 * rng.standard_normal((6, size, size))).astype(np.float32)
        scene.paths["ms"] = write_raster(root / "ms.tif", refl, transform, nodata=None)
    keep = rng.random((size, size)) < label_fraction
    scene.labels = write_labels(root / "labels.tif", np.where(keep, truth, 0), transform)
    return scene


FUSION_CLASS_NAMES = ["grassland", "forest", "roads", "buildings"]
FUSION_CLASS_COLOURS = {1: (150, 220, 50), 2: (0, 100, 0), 3: (128, 128, 128), 4: (200, 0, 0)}


def make_fusion_scene(root: Path, size: int = 48, seed: int = 0, hsi_bands: int = 16,
                      label_fraction: float = 0.15) -> Scene:
    """A scene that only the fusion of HSI and LiDAR separates: grassland and forest have the
    same (vegetation) spectrum and differ only in height; roads and buildings have the same
    (asphalt/concrete) spectrum and differ only in height; grassland and roads share one
    height, forest and buildings another. Each modality alone tells two pairs apart, so a
    single-modality model is right on about half the pixels and a model that drops or
    misregisters one modality cannot pass for a fused one."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    truth = class_map(size, size, rng)
    transform = from_origin(465000.0, 5080000.0, 10.0, 10.0)
    scene = Scene(root, truth, transform, UTM, class_names=list(FUSION_CLASS_NAMES))
    idx = truth.astype(int) - 1
    _water, veg, built, _grass = spectra(hsi_bands, rng)
    spectrum = np.stack([veg, veg, built, built])  # per class: same spectrum within each pair
    refl = spectrum[idx].transpose(2, 0, 1) * (1 + 0.05 * rng.standard_normal((1, size, size)))
    refl += 0.01 * rng.standard_normal(refl.shape)
    scene.paths["hsi"] = write_raster(root / "hsi.tif", np.clip(refl * 10000, 0, 32767).astype(np.int16), transform,
                                      nodata=-1, descriptions=[f"b{i}" for i in range(hsi_bands)])
    heights = np.array([0.3, 12.0, 0.3, 12.0])[idx] + 300 + 0.5 * rng.standard_normal((size, size))
    scene.paths["lidar"] = write_raster(root / "dsm.tif", heights.astype(np.float32), transform, nodata=-9999.0,
                                        descriptions=["dsm"])
    keep = rng.random((size, size)) < label_fraction
    scene.labels = write_labels(root / "labels.tif", np.where(keep, truth, 0), transform,
                                names=FUSION_CLASS_NAMES, colours=FUSION_CLASS_COLOURS)
    return scene


def write_polygons(path: Path, scene: Scene, crs_epsg: int = 4326, n_per_class: int = 3, half: int = 2,
                   field_name: str = "cover") -> Path:
    """Small square polygons centred in class regions, reprojected into ``crs_epsg``."""
    from osgeo import ogr, osr

    src = osr.SpatialReference()
    src.ImportFromEPSG(32633)
    dst = osr.SpatialReference()
    dst.ImportFromEPSG(crs_epsg)
    for s in (src, dst):
        s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    ct = osr.CoordinateTransformation(src, dst)
    driver = ogr.GetDriverByName("GPKG")
    ds = driver.CreateDataSource(str(path))
    layer = ds.CreateLayer("labels", dst, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn(field_name, ogr.OFTString))
    layer.CreateField(ogr.FieldDefn("code", ogr.OFTInteger))
    rng = np.random.default_rng(1)
    t = scene.transform
    h, w = scene.truth.shape
    for code, name in enumerate(CLASS_NAMES, start=1):
        rows, cols = np.nonzero(scene.truth == code)
        ok = (rows >= half) & (rows < h - half) & (cols >= half) & (cols < w - half)
        rows, cols = rows[ok], cols[ok]
        placed = 0
        for i in rng.permutation(rows.size):
            r, c = rows[i], cols[i]
            if not (scene.truth[r - half:r + half + 1, c - half:c + half + 1] == code).all():
                continue
            x0, y0 = t * (c - half + 0.5, r - half + 0.5)
            x1, y1 = t * (c + half + 0.5, r + half + 0.5)
            ring = ogr.Geometry(ogr.wkbLinearRing)
            for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)):
                ring.AddPoint_2D(x, y)
            poly = ogr.Geometry(ogr.wkbPolygon)
            poly.AddGeometry(ring)
            poly.Transform(ct)
            f = ogr.Feature(layer.GetLayerDefn())
            f.SetField(field_name, name)
            f.SetField("code", code)
            f.SetGeometry(poly)
            layer.CreateFeature(f)
            placed += 1
            if placed == n_per_class:
                break
    ds = None
    return path


@pytest.fixture
def scene(tmp_path) -> Scene:
    return make_scene(tmp_path / "scene")


@pytest.fixture(scope="session")
def shared_scene(tmp_path_factory) -> Scene:
    return make_scene(tmp_path_factory.mktemp("shared") / "scene")


FAST = dict(patch_size=5, epochs=40, batch_size=64, learning_rate=3e-3, patience=10, seed=0, device="cpu")


@pytest.fixture(scope="session")
def fast_options():
    """The fast training settings :func:`trained_model` was trained with."""
    return dict(FAST)


@pytest.fixture(scope="session")
def trained_model(shared_scene, tmp_path_factory):
    """HSI + LiDAR model trained once on the shared scene (fast settings)."""
    from rsvl.backend import api
    from rsvl.backend.io.raster import LayerSpec

    out = tmp_path_factory.mktemp("model") / "hsi_lidar.safetensors"
    layers = [LayerSpec(str(shared_scene.paths["hsi"]), "hsi"), LayerSpec(str(shared_scene.paths["lidar"]), "lidar")]
    result = api.train(layers, str(shared_scene.labels), str(out), **FAST)
    return out, result, layers


@pytest.fixture(scope="session")
def tiny_hf_encoder(tmp_path_factory) -> Path:
    """A tiny random BERT in Hugging Face format with the built-in MiniLM's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from rsvl.backend.text.encoders import builtin_minilm_path

    path = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(builtin_minilm_path()).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_open_clip(tmp_path_factory) -> Path:
    """A tiny random open_clip model directory (open_clip_config.json + safetensors)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("tiny-clip")
    cfg = {
        "embed_dim": 48,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{path}", load_weights=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    return path


def load_bench(name: str):
    """bench/NAME.py as a module (the benches are scripts, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"rsvl_bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def accuracy_bench():
    return load_bench("accuracy")


@pytest.fixture(scope="session")
def bench_docs():
    return load_bench("docs")


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Run ``python -m rsvl.backend`` in a subprocess; returns CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "rsvl.backend", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def scene_factory(tmp_path):
    def factory(name="scene", **kwargs) -> Scene:
        return make_scene(tmp_path / name, **kwargs)

    return factory


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for the ``positive`` pixels: the chance that a
    positive pixel outranks a negative one (0.5: no better than chance)."""
    score, positive = np.ravel(score), np.ravel(positive).astype(bool)
    ranks = np.empty(score.size)
    ranks[np.argsort(score, kind="stable")] = np.arange(1, score.size + 1)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def write_nan_band(src: str, out: Path, band: int) -> Path:
    """A float32 copy of raster ``src`` whose ``band`` (0-based) is NaN everywhere."""
    with rasterio.open(src) as ds:
        data, profile = ds.read().astype(np.float32), ds.profile
    data[band] = np.nan
    with rasterio.open(out, "w", **{**profile, "dtype": "float32", "nodata": None}) as dst:
        dst.write(data)
    return out


def make_wheel(folder: Path, name: str, version: str, requires: Sequence[str] = (),
               files: Dict[str, str] = None) -> Path:
    """``folder/NAME-VERSION-py3-none-any.whl`` with a package ``NAME`` (or ``files``)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = dict(files or {f"{name}/__init__.py": f"__version__ = {version!r}\n"})
    info = f"{name}-{version}.dist-info"
    files[f"{info}/METADATA"] = "".join([f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
                                         *(f"Requires-Dist: {r}\n" for r in requires)])
    files[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: rsvl-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    out = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return out


@pytest.fixture(scope="module")
def plugin(qgis_app, qgis_processing, qgis_iface):
    """The rsvl plugin loaded into pytest-qgis's QGIS, as QGIS loads it (classFactory, initGui)."""
    import rsvl

    p = rsvl.classFactory(qgis_iface)
    p.initGui()
    yield p
    p.unload()


@pytest.fixture(scope="session")
def helpers():
    """Writers for tests that build their own rasters and vectors."""

    class Helpers:
        make_scene = staticmethod(make_scene)
        make_fusion_scene = staticmethod(make_fusion_scene)
        auc = staticmethod(auc)
        write_raster = staticmethod(write_raster)
        write_labels = staticmethod(write_labels)
        write_polygons = staticmethod(write_polygons)
        write_nan_band = staticmethod(write_nan_band)
        make_wheel = staticmethod(make_wheel)
        fast = FAST
        class_names = CLASS_NAMES

    return Helpers


def random_model(bands, patch_size, n_classes=5, embed_dim=24, seed=0, pixel_channels=()):
    """A small random MMLGNet in eval mode with non-trivial batch-norm statistics, as
    after training (for equality tests of the inference paths); ``pixel_channels``: a
    spectral-spatial model's pixel branch."""
    import torch

    from rsvl.backend.models.mmlgnet import MMLGNet, ModelConfig

    torch.manual_seed(seed)
    model = MMLGNet(ModelConfig(bands=bands, embed_dim=embed_dim, patch_size=patch_size,
                                channels={m: [8, 12, 16] for m in bands}, pixel_channels=list(pixel_channels)),
                   n_classes)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.class_embeddings.copy_(torch.nn.functional.normalize(torch.randn(n_classes, embed_dim), dim=1))
    return model.eval()


@pytest.fixture(name="random_model", scope="session")
def random_model_fixture():
    return random_model


# A tiny RGB open_clip checkpoint, a 3-band scene of three value regions and labels on them
# (few-shot adaptation: tests/test_backend_fewshot.py, tests/test_issue34_messages.py).
FEWSHOT_TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
FEWSHOT_NAMES = {1: "water", 2: "forest", 3: "bare soil"}


@pytest.fixture(scope="session")
def fewshot_scene(tmp_path_factory):
    """A tiny RGB checkpoint, a 3-band scene of three value regions and labels on them."""
    root = tmp_path_factory.mktemp("fewshot")
    (root / "arch").mkdir()
    (root / "arch" / "open_clip_config.json").write_text(json.dumps({"model_cfg": FEWSHOT_TINY}))
    preset = f"open_clip:local-dir:{root / 'arch'}"
    import torch

    from rsvl.backend.foundation.checkpoint import build_model
    from rsvl.backend.foundation.presets import get_preset

    torch.manual_seed(0)
    torch.save(build_model(get_preset(preset)).state_dict(), root / "clip.pt")
    h, w = 64, 96
    truth = np.ones((h, w), np.uint8)
    truth[:, 32:64] = 2
    truth[:, 64:] = 3
    rng = np.random.default_rng(0)
    level = np.array([0, 30, 120, 230], np.float32)[truth]
    rgb = np.clip(level[None] + rng.normal(0, 10, (3, h, w)), 0, 255).astype(np.uint8)
    t = from_origin(500000, 5000000, 10, 10)
    common = dict(driver="GTiff", width=w, height=h, crs="EPSG:32633", transform=t)
    with rasterio.open(root / "rgb.tif", "w", count=3, dtype="uint8", **common) as dst:
        dst.write(rgb)
    labels = np.zeros((h, w), np.uint8)
    labels[rng.random((h, w)) < 0.3] = 1
    labels *= truth
    with rasterio.open(root / "labels.tif", "w", count=1, dtype="uint8", nodata=0, **common) as dst:
        dst.write(labels, 1)
        dst.write_colormap(1, {1: (0, 0, 255), 2: (0, 100, 0), 3: (160, 120, 60)})
    from rsvl.backend.io.labels import ClassInfo, set_category_names

    set_category_names(str(root / "labels.tif"), [ClassInfo(c, n, (0, 0, 0)) for c, n in FEWSHOT_NAMES.items()])
    return root, preset, truth


TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def rgb_checkpoint(tmp_path_factory):
    """A tiny random RGB open_clip checkpoint (.pt state dict), its preset name, an RGB scene
    and the architecture folder (for PRESET open_clip, OPEN_CLIP_ARCH local-dir:…)."""
    import torch
    from rasterio.transform import from_origin

    from rsvl.backend.foundation.checkpoint import build_model
    from rsvl.backend.foundation.presets import get_preset

    root = tmp_path_factory.mktemp("explore-ckpt")
    (root / "arch").mkdir()
    (root / "arch" / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    preset = get_preset(f"open_clip:local-dir:{root / 'arch'}")
    torch.manual_seed(0)
    torch.save(build_model(preset).state_dict(), root / "m.pt")
    rng = np.random.default_rng(0)
    values = rng.integers(1, 255, (3, 70, 90)).astype(np.uint8)
    values[:, :4, :] = 0
    scene = root / "rgb.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=90, height=70, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000, 5000000, 10, 10), nodata=0) as dst:
        dst.write(values)
    return str(root / "m.pt"), preset.name, str(scene), str(root / "arch")
