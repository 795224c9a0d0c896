"""classify and query on a Dask cluster (backend/mapping/cluster.py) write the same files as in
process: array-equal pixels, the same profile, colour table, class names and band
descriptions; the model is loaded once per worker process; a worker killed mid-run
changes nothing; a cancel releases the tasks and leaves no file; bad schedulers and
workers that see other files are clear errors."""

from __future__ import annotations

import math
import os
import signal
import socket
import time

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

pytest.importorskip("distributed")
from distributed.diagnostics.plugin import WorkerPlugin  # noqa: E402

TILE = 16  # small windows: many tasks on a small scene


class DieDuringWindow(WorkerPlugin):
    """Kills its worker process (SIGKILL) the first time any worker starts executing window
    ``index``; the marker file (exclusive create) says which process died, and that it happened."""

    name = "rsvl-test-die-during-window"

    def __init__(self, marker: str, index: int):
        self.marker, self.index = marker, index

    def transition(self, key, start, finish, **kwargs):
        if finish != "executing" or not str(key).startswith("rsvl-window-") or not str(key).endswith(f"-{self.index}"):
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, f"{os.getpid()} {key}".encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(scope="module")
def scene(tmp_path_factory, helpers):
    """96 x 96 HSI + LiDAR scene, plus the LiDAR at half the resolution (warped on reading)."""
    root = tmp_path_factory.mktemp("dask")
    s = helpers.make_scene(root / "scene", size=96, modalities=("hsi", "lidar"))
    with rasterio.open(s.paths["lidar"]) as ds:
        dsm = ds.read()
    t = s.transform
    s.paths["lidar_coarse"] = helpers.write_raster(root / "dsm_coarse.tif", dsm[:, ::2, ::2],
                                                   from_origin(t.c, t.f, 2 * t.a, 2 * t.a), nodata=-9999.0)
    return s


@pytest.fixture(scope="module")
def model_file(scene, random_model, tmp_path_factory):
    """A random HSI + LiDAR model in the MiniLM embedding space, saved like rsvl:train saves one."""
    import torch
    from rasterio.windows import Window

    from rsvl.backend.data.samples import read_window_normalised
    from rsvl.backend.io.labels import ClassInfo
    from rsvl.backend.io.raster import LayerSpec, RasterStack, compute_band_stats
    from rsvl.backend.models.dense import DenseEmbedder
    from rsvl.backend.models.modelfile import ModelHeader, save_model
    from rsvl.backend.text.encoders import get_text_encoder

    encoder = get_text_encoder("minilm")
    model = random_model({"hsi": 24, "lidar": 1}, 5, n_classes=4, embed_dim=encoder.dim, seed=3)
    with RasterStack([LayerSpec(str(scene.paths["hsi"]), "hsi"), LayerSpec(str(scene.paths["lidar"]), "lidar")]) as st:
        stats, names = compute_band_stats(st), st.band_names()
        norm, _ok = read_window_normalised(st, Window(0, 0, 96, 96), 2, stats)
    # Class embeddings = the mean embedding of each true class: a nearest-centroid map with every class in it.
    emb = DenseEmbedder(model).embed({m: torch.from_numpy(a)[None] for m, a in norm.items()})[0]
    truth = torch.from_numpy(scene.truth.astype(np.int64))
    centroids = torch.stack([emb[:, truth == c].mean(1) for c in range(1, 5)])
    model.class_embeddings.copy_(torch.nn.functional.normalize(centroids, dim=1))
    classes = [ClassInfo(i + 1, n, c) for i, (n, c) in enumerate(zip(["water", "forest", "buildings", "grassland"],
                                                                       [(0, 0, 255), (0, 100, 0), (200, 0, 0),
                                                                        (150, 220, 50)]))]
    header = ModelHeader(config=model.config, band_names=names, stats=stats, classes=classes,
                         prompt_template="a remote sensing image of {}", text_encoder=encoder.id)
    path = tmp_path_factory.mktemp("dask-model") / "model.safetensors"
    save_model(str(path), model, header)
    return str(path)


@pytest.fixture(scope="module")
def thread_cluster():
    """Two one-thread workers in this process (quick to start)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def process_cluster():
    """Two one-thread worker processes, each behind a nanny that restarts it when it dies."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster, set_as_default=False) as client:
        yield cluster, client


def layers(scene, lidar="lidar"):
    from rsvl.backend.io.raster import LayerSpec

    return [LayerSpec(str(scene.paths["hsi"]), "hsi"), LayerSpec(str(scene.paths[lidar]), "lidar")]


def assert_same_raster(a, b):
    """Array-equal pixels (NaN where NaN) and the same metadata."""
    with rasterio.open(a) as x, rasterio.open(b) as y:
        assert np.array_equal(x.read(), y.read(), equal_nan=True)
        px, py = dict(x.profile), dict(y.profile)
        nx, ny = px.pop("nodata"), py.pop("nodata")
        assert px == py
        assert nx == ny or (math.isnan(nx) and math.isnan(ny))
        assert x.descriptions == y.descriptions and x.tags() == y.tags()
        assert [x.tags(i) for i in x.indexes] == [y.tags(i) for i in y.indexes]
        if x.dtypes[0] in ("uint8", "uint16"):
            assert x.colormap(1) == y.colormap(1)
    from osgeo import gdal

    names = []
    for path in (a, b):
        ds = gdal.Open(str(path))
        names.append(ds.GetRasterBand(1).GetCategoryNames())
        ds = None
    assert names[0] == names[1]


def test_scheduler_specs():
    from rsvl.backend.errors import InputError
    from rsvl.backend.mapping.cluster import parse_scheduler

    assert parse_scheduler("local") == ("local", os.cpu_count())
    assert parse_scheduler(" local:3 ") == ("local", 3)
    assert parse_scheduler("tcp://10.0.0.5:8786") == ("address", "tcp://10.0.0.5:8786")
    assert parse_scheduler("node7:8786") == ("address", "node7:8786")
    for bad in ("local:0", "lcoal", "tcp//x", "", "local:two"):
        with pytest.raises(InputError, match="DASK_SCHEDULER"):
            parse_scheduler(bad)


def test_cluster_classify_is_identical_to_in_process(scene, model_file, thread_cluster, tmp_path):
    from rsvl.backend import api

    outs = {}
    for name, scheduler in (("here", None), ("dask", thread_cluster.scheduler_address)):
        fractions = []
        res = api.classify(model_file, layers(scene), str(tmp_path / f"{name}.tif"),
                           confidence=str(tmp_path / f"{name}_conf.tif"), similarity=str(tmp_path / f"{name}_sim.tif"),
                           tile_size=TILE, device="cpu", scheduler=scheduler,
                           progress=lambda f, m, fractions=fractions: fractions.append(f))
        outs[name] = res
        assert fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert outs["dask"].pixels == outs["here"].pixels == 96 * 96
    for suffix in ("", "_conf", "_sim"):
        assert_same_raster(tmp_path / f"here{suffix}.tif", tmp_path / f"dask{suffix}.tif")
    with rasterio.open(tmp_path / "dask.tif") as ds:
        codes = ds.read(1)
    assert set(np.unique(codes)) == {1, 2, 3, 4}
    assert not [p for p in os.listdir(tmp_path) if ".part" in p]


def test_cluster_classify_in_bfloat16_is_identical_to_in_process(scene, model_file, thread_cluster, tmp_path):
    """PRECISION bfloat16 reaches the workers (RunSpec.precision): their similarities are the
    in-process bfloat16 engine's, not float32's."""
    from rsvl.backend import api

    for name, scheduler in (("here", None), ("dask", thread_cluster.scheduler_address)):
        api.classify(model_file, layers(scene), str(tmp_path / f"{name}.tif"), similarity=str(tmp_path / f"{name}_sim.tif"),
                     tile_size=TILE, device="cpu", scheduler=scheduler, precision="bfloat16")
    api.classify(model_file, layers(scene), str(tmp_path / "f32.tif"), similarity=str(tmp_path / "f32_sim.tif"),
                 tile_size=TILE, device="cpu", precision="float32")
    assert_same_raster(tmp_path / "here_sim.tif", tmp_path / "dask_sim.tif")
    with rasterio.open(tmp_path / "dask_sim.tif") as a, rasterio.open(tmp_path / "f32_sim.tif") as b:
        assert not np.array_equal(a.read(), b.read())


def test_cluster_query_with_warped_input_is_identical_to_in_process(scene, model_file, thread_cluster, tmp_path):
    from rsvl.backend import api

    prompts = ["open water", "tall trees", "rooftops"]
    lidar = "lidar_coarse"
    api.query(model_file, layers(scene, lidar), prompts, str(tmp_path / "first_sim.tif"), tile_size=TILE, device="cpu")
    with rasterio.open(tmp_path / "first_sim.tif") as ds:
        threshold = float(np.median(ds.read().max(0)))  # half the pixels fall below it
    for name, scheduler in (("here", None), ("dask", thread_cluster.scheduler_address)):
        api.query(model_file, layers(scene, lidar), prompts, str(tmp_path / f"{name}_sim.tif"),
                  output=str(tmp_path / f"{name}.tif"), threshold=threshold, tile_size=TILE, device="cpu",
                  scheduler=scheduler)
    for suffix in ("", "_sim"):
        assert_same_raster(tmp_path / f"here{suffix}.tif", tmp_path / f"dask{suffix}.tif")
    with rasterio.open(tmp_path / "dask_sim.tif") as ds:
        assert ds.descriptions == tuple(prompts)
    with rasterio.open(tmp_path / "dask.tif") as ds:
        best = ds.read(1)
    assert 0.3 < (best == 0).mean() < 0.7  # below the threshold: nodata, from the workers' best scores


def test_worker_processes_load_the_model_once_and_give_the_same_file(scene, model_file, process_cluster, tmp_path):
    from rsvl.backend import api
    from rsvl.backend.mapping.cluster import model_loads

    cluster, client = process_cluster
    api.classify(model_file, layers(scene), str(tmp_path / "here.tif"), tile_size=TILE, device="cpu")
    for run in (1, 2):  # 36 windows per run, two runs: still one load per worker process
        api.classify(model_file, layers(scene), str(tmp_path / f"dask{run}.tif"), tile_size=TILE, device="cpu",
                     scheduler=cluster.scheduler_address)
        assert_same_raster(tmp_path / "here.tif", tmp_path / f"dask{run}.tif")
    loads = client.run(model_loads)
    assert len(loads) == 2 and set(loads.values()) == {1}, loads
    assert len(set(client.run(os.getpid).values()) | {os.getpid()}) == 3  # real processes, not threads here


def test_a_worker_killed_mid_run_still_gives_the_identical_file(scene, model_file, process_cluster, tmp_path):
    import sys

    import cloudpickle

    from rsvl.backend import api

    cluster, client = process_cluster
    api.classify(model_file, layers(scene), str(tmp_path / "here.tif"), confidence=str(tmp_path / "here_conf.tif"),
                 tile_size=TILE, device="cpu")
    before = set(client.run(os.getpid).values())
    marker = tmp_path / "died"
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    client.register_plugin(DieDuringWindow(str(marker), index=10))
    try:
        api.classify(model_file, layers(scene), str(tmp_path / "dask.tif"), confidence=str(tmp_path / "dask_conf.tif"),
                     tile_size=TILE, device="cpu", scheduler=cluster.scheduler_address)
    finally:
        client.unregister_worker_plugin(DieDuringWindow.name)
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    pid, key = marker.read_text().split()
    assert int(pid) in before and key.endswith("-10")  # a worker of this cluster died running window 10
    assert_same_raster(tmp_path / "here.tif", tmp_path / "dask.tif")
    assert_same_raster(tmp_path / "here_conf.tif", tmp_path / "dask_conf.tif")
    client.wait_for_workers(2, timeout=60)  # its nanny started a new worker process
    assert int(pid) not in client.run(os.getpid).values()


def test_cancel_releases_the_tasks_and_leaves_no_file(scene, model_file, thread_cluster, tmp_path):
    from rsvl.backend import api
    from rsvl.backend.errors import CancelledError

    seen = []
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CancelledError):
        api.classify(model_file, layers(scene), str(out / "classes.tif"), confidence=str(out / "conf.tif"),
                     tile_size=TILE, device="cpu", scheduler=thread_cluster.scheduler_address,
                     progress=lambda f, m: seen.append(f), is_cancelled=lambda: bool(seen) and seen[-1] >= 0.25)
    assert os.listdir(out) == []
    assert 0.25 <= seen[-1] < 1.0
    deadline = time.monotonic() + 10
    while [k for k in thread_cluster.scheduler.tasks if "rsvl-window" in str(k)]:
        assert time.monotonic() < deadline, "the cancelled windows stayed on the scheduler"
        time.sleep(0.05)


def test_an_unreachable_scheduler_is_an_input_error(scene, model_file, tmp_path, monkeypatch):
    from rsvl.backend import api
    from rsvl.backend.errors import InputError
    from rsvl.backend.mapping import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens once it is closed
    with pytest.raises(InputError, match=f"no Dask scheduler answers at 'tcp://127.0.0.1:{port}'"):
        api.classify(model_file, layers(scene), str(tmp_path / "c.tif"), device="cpu",
                     scheduler=f"tcp://127.0.0.1:{port}")
    assert not os.listdir(tmp_path)


def test_workers_refuse_another_model_file_or_other_inputs(scene, model_file, tmp_path, helpers):
    """A worker that sees a different model file, or other inputs, at the client's paths
    stops the run with an error naming the problem (not a silently different map)."""
    import dataclasses

    from rasterio.windows import Window

    from rsvl.backend.errors import InputError, ModelFileError
    from rsvl.backend.io.raster import RasterStack
    from rsvl.backend.mapping import cluster
    from rsvl.backend.models.modelfile import read_header

    header = read_header(model_file)
    with RasterStack(layers(scene)) as stack:
        spec = cluster.RunSpec(
            run_id="t1", version=cluster.__version__, model_path=model_file, model_sha256=cluster.file_sha256(model_file),
            layers=tuple(stack.layers), reference=stack.reference, align=True, grid=stack.grid,
            band_counts=tuple(stack.band_counts().items()), stats=header.stats,
            text=np.eye(4, 384, dtype=np.float32), method="dense", batch_size=4096, device="cpu", confidence=False,
            similarity=True, threshold=None)
    scores = cluster.score_window(spec, (16, 32, 16, 16))
    assert scores.sim.shape == (4, 16, 16) and scores.best is None and scores.arg.dtype == np.uint8
    assert scores.window == Window(16, 32, 16, 16)
    with pytest.raises(ModelFileError, match="differs from the client's"):
        cluster.score_window(dataclasses.replace(spec, model_sha256="0" * 64), (0, 0, 16, 16))
    other = helpers.make_scene(tmp_path / "other", size=40, modalities=("hsi", "lidar"))
    moved = dataclasses.replace(spec, run_id="t2", layers=tuple(layers(other)))
    with pytest.raises(InputError, match="sees other inputs than the client"):
        cluster.score_window(moved, (0, 0, 16, 16))


def test_cli_scheduler_local_starts_worker_processes_and_writes_the_same_map(scene, model_file, tmp_path, cli):
    from rsvl.backend import api

    api.classify(model_file, layers(scene), str(tmp_path / "here.tif"), tile_size=32, device="cpu")
    res = cli("classify", "-m", model_file, "--hsi", scene.paths["hsi"], "--lidar", scene.paths["lidar"],
              "-o", tmp_path / "dask.tif", "--tile-size", "32", "--device", "cpu", "--scheduler", "local:2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 worker thread(s); 9 windows" in res.stderr
    assert_same_raster(tmp_path / "here.tif", tmp_path / "dask.tif")
    bad = cli("classify", "-m", model_file, "--hsi", scene.paths["hsi"], "--lidar", scene.paths["lidar"],
              "-o", tmp_path / "bad.tif", "--scheduler", "local:0")
    assert bad.returncode == 2 and "rsvl: error: DASK_SCHEDULER local:N needs at least one worker" in bad.stderr


def test_a_band_without_valid_pixels_is_refused_before_the_cluster_works(scene, model_file, thread_cluster,
                                                                         tmp_path, helpers):
    from rsvl.backend import api
    from rsvl.backend.errors import ModelMismatchError

    ins = layers(scene)
    nan_band = helpers.write_nan_band(ins[0].path, tmp_path / "nan_band.tif", 1)
    bad = [type(ins[0])(str(nan_band), ins[0].modality)] + ins[1:]
    out = tmp_path / "classes.tif"
    with pytest.raises(ModelMismatchError, match="nan_band.tif:band2 hold no valid pixel"):
        api.classify(model_file, bad, str(out), tile_size=TILE, device="cpu",
                     scheduler=thread_cluster.scheduler_address)
    assert not out.exists()
