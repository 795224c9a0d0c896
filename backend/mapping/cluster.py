"""Whole-scene inference on a Dask cluster: ``classify|query --scheduler`` (DASK_SCHEDULER).

``scheduler`` is ``local`` or ``local:N`` (a ``LocalCluster`` of N one-thread worker
processes on this machine, default one per core) or the address of a running scheduler
(``tcp://HOST:8786``, started with ``dask scheduler``; workers with ``dask worker``).

The windows of the in-process path (:meth:`RasterStack.scan`: ``tile`` pixels, with a halo
of ``patch_size // 2``) become dask.distributed tasks. A worker

- loads the model once per process (:func:`_engine`: cached by model path and file
  identity, checked against the client's SHA-256) and keeps the inputs open once per
  thread and run, so neighbouring windows come from GDAL's block cache;
- reads its window straight from the input paths (local files, shared storage or GDAL
  ``/vsi…`` URLs: every worker must see the paths the client was given);
- scores it with the in-process compute step (:class:`~rsvl.backend.mapping.inference.WindowScorer`)
  and returns the block (:class:`~rsvl.backend.mapping.inference.WindowResult`).

The client writes the blocks into the outputs (:class:`~rsvl.backend.mapping.inference.OutputRasters`:
the same tiled, compressed GeoTIFFs with colour table and class names) as they arrive
(``as_completed``), with at most :data:`IN_FLIGHT_PER_THREAD` tasks per worker thread
submitted at a time: client memory does not grow with the scene. The same windows, reads
and compute give the same pixels as in-process, bit for bit (torch's thread count does
not change the dense engine's floats).

Progress is the share of windows written; ``is_cancelled()`` is polled every
:data:`POLL_S` s and a cancel releases every task (queued ones never run, running ones
are dropped when they end) and removes the temporary outputs. A worker that dies has its
windows recomputed by the others (the scheduler's ``allowed-failures``); a window whose
task raises is retried :data:`RETRIES` times before its error ends the run.

dask is imported here only, when a scheduler is given: plain classification and the QGIS
plugin's start never pay for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import socket
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .. import __version__
from ..errors import InputError, ModelFileError, RsvlError
from ..io.labels import ClassInfo
from ..io.raster import BandStats, LayerSpec, RasterStack, gdal_cache_limit
from ..runtime.allocator import tune_allocator
from ..runtime.jobs import Job

log = logging.getLogger("rsvl")

IN_FLIGHT_PER_THREAD = 2  # tasks submitted per worker thread: one running, one queued behind it
RETRIES = 2  # extra tries of a window whose task raised (flaky shared storage)
POLL_S = 0.05  # how often the client looks for finished windows and at is_cancelled()
CONNECT_TIMEOUT_S = 20  # waiting for a remote scheduler to answer
_LOCAL = re.compile(r"^local(?::(\d+))?$")
_ADDRESS = re.compile(r"^(?:[a-z][a-z0-9+.-]*://\S+|[^\s:/]+:\d+)$")


def parse_scheduler(scheduler: str) -> Tuple[str, object]:
    """``("local", n_workers)`` or ``("address", address)``; :class:`InputError` otherwise."""
    spec = (scheduler or "").strip()
    m = _LOCAL.match(spec)
    if m:
        n = int(m.group(1)) if m.group(1) else (os.cpu_count() or 1)
        if n < 1:
            raise InputError(f"DASK_SCHEDULER local:N needs at least one worker (got {spec!r})")
        return "local", n
    if _ADDRESS.match(spec):
        return "address", spec
    raise InputError(f"DASK_SCHEDULER must be local, local:N or a scheduler address such as tcp://10.0.0.5:8786 "
                     f"(got {scheduler!r})")


@contextlib.contextmanager
def connect(scheduler: str) -> Iterator[object]:
    """A ``distributed.Client`` for ``scheduler``; a ``local`` cluster lives as long as the client."""
    from distributed import Client, LocalCluster

    # dask logs every connection at INFO; rsvl's own log says what matters (warnings still show)
    quiet = logging.getLogger("distributed")
    quiet.setLevel(max(quiet.getEffectiveLevel(), logging.WARNING))
    kind, value = parse_scheduler(scheduler)
    if kind == "local":
        log.info("starting a local Dask cluster of %d one-thread worker processes", value)
        with LocalCluster(n_workers=value, threads_per_worker=1, processes=True, dashboard_address=":0",
                          silence_logs=logging.ERROR) as local, Client(local, set_as_default=False) as client:
            yield client
        return
    try:
        client = Client(value, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise InputError(f"DASK_SCHEDULER: no Dask scheduler answers at {value!r} ({exc}); start one with "
                         f"`dask scheduler` and workers with `dask worker {value}`") from exc
    with client:
        yield client


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class RunSpec:
    """What every window task of one run needs (a few KB, sent with each task)."""

    run_id: str
    version: str
    model_path: str
    model_sha256: str
    layers: Tuple[LayerSpec, ...]
    reference: int
    align: bool
    grid: object  # the client's reference grid: workers must see the same inputs
    band_counts: Tuple[Tuple[str, int], ...]
    stats: Dict[str, BandStats]
    text: np.ndarray  # (K, D) float32 text embeddings
    method: str
    batch_size: int
    device: str
    confidence: bool
    similarity: bool
    threshold: Optional[float]
    precision: str = "float32"  # the dense engine's convolutions (runtime/precision.py)


# -- worker side ---------------------------------------------------------------------------
_ENGINES: Dict[tuple, tuple] = {}
_ENGINES_LOCK = threading.Lock()
_MODEL_LOADS = [0]
_THREAD = threading.local()


def model_loads() -> int:
    """How many times this process loaded a model for window tasks (tests: once per worker)."""
    return _MODEL_LOADS[0]


def _engine(spec: RunSpec):
    """(model, dense embedder or None) of ``spec``'s model, loaded once per process."""
    from ..models.modelfile import load_model
    from ..runtime.device import resolve_device

    try:
        st = os.stat(spec.model_path)
    except OSError as exc:
        raise ModelFileError(f"worker {socket.gethostname()}: cannot read the model {spec.model_path!r} ({exc}); "
                             "every worker must see the model and inputs at the client's paths") from exc
    key = (spec.model_path, st.st_size, st.st_mtime_ns, spec.device, spec.method, spec.precision)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            device = resolve_device(spec.device)
            digest = file_sha256(spec.model_path)
            model, _header = load_model(spec.model_path, device)
            embedder = None
            if spec.method == "dense":
                from ..models.dense import dense_embedder

                embedder = dense_embedder(model, device, dtype=getattr(torch, spec.precision))
            for old in [k for k in _ENGINES if k[0] == spec.model_path]:
                del _ENGINES[old]  # the file changed: drop the stale copy
            engine = _ENGINES[key] = (model, embedder, device, digest)
            if not _MODEL_LOADS[0]:
                tune_allocator(force=True)  # against the nanny's MALLOC_TRIM_THRESHOLD_=65536
            _MODEL_LOADS[0] += 1
            log.info("worker %s: loaded model %s", socket.gethostname(), os.path.basename(spec.model_path))
    if engine[3] != spec.model_sha256:
        raise ModelFileError(f"worker {socket.gethostname()}: the model file {spec.model_path!r} differs from the "
                             "client's; copy the same file to every machine")
    return engine[:3]


def _stack(spec: RunSpec) -> RasterStack:
    """The inputs, opened once per worker thread and run (GDAL datasets are not shared
    between threads); checked against the client's grid and band counts."""
    current = getattr(_THREAD, "stack", None)
    if current is not None and current[0] == spec.run_id:
        return current[1]
    if current is not None:
        current[1].close()
        _THREAD.stack = None
    stack = RasterStack(list(spec.layers), reference=spec.reference, align=spec.align)
    if stack.grid != spec.grid or tuple(stack.band_counts().items()) != spec.band_counts:
        stack.close()
        raise InputError(f"worker {socket.gethostname()} sees other inputs than the client at "
                         f"{', '.join(str(layer.path) for layer in spec.layers)}; every worker must see the same files")
    _THREAD.stack = (spec.run_id, stack)
    return stack


def score_window(spec: RunSpec, window: Tuple[int, int, int, int]):
    """The task: one window's :class:`WindowResult`, computed on a worker."""
    from rasterio.windows import Window

    from ..data.samples import read_window_normalised
    from .inference import WindowScorer

    if spec.version != __version__:
        raise InputError(f"worker {socket.gethostname()} runs rsvl {__version__}, the client {spec.version}; "
                         "install the same version everywhere")
    model, embedder, device = _engine(spec)
    win = Window(*window)
    norm, ok = read_window_normalised(_stack(spec), win, model.config.patch_size // 2, spec.stats)
    scorer = WindowScorer(model, torch.from_numpy(spec.text), method=spec.method, batch_size=spec.batch_size,
                          device=device, confidence=spec.confidence, similarity=spec.similarity, embedder=embedder)
    scores = scorer(win, norm, ok)
    # Smaller on the wire, same file: the text index fits 8 or 16 bits; ``best`` only serves the threshold.
    if scores.arg is not None:
        scores.arg = scores.arg.astype(np.uint8 if spec.text.shape[0] <= 256 else np.int32)
    if spec.threshold is None:
        scores.best = None
    return scores


# -- client side ---------------------------------------------------------------------------
def _threads(client) -> int:
    return sum(client.nthreads().values())


def run_on_cluster(
    model, stack: RasterStack, stats, text, *, scheduler: str, model_path: str, worker_device: str = "auto",
    classes: Sequence[ClassInfo], class_path: Optional[str], confidence_path: Optional[str] = None,
    similarity_path: Optional[str] = None, similarity_names: Optional[List[str]] = None,
    threshold: Optional[float] = None, method: str = "dense", tile: int = 256, batch_size: int = 4096,
    device=None, job: Optional[Job] = None, dtype=None,
):
    """:func:`~rsvl.backend.mapping.inference.run_inference` with the windows computed on the Dask
    cluster ``scheduler``; workers load ``model_path`` on ``worker_device`` (``device`` is the
    client's, used for nothing here). Same outputs, same :class:`InferenceOutputs`."""
    from distributed import KilledWorker, as_completed

    from .inference import GDAL_CACHE_MB, METHODS, InferenceOutputs, OutputRasters, _no_valid_pixel

    if method not in METHODS:
        raise InputError(f"METHOD must be one of {', '.join(METHODS)} (got {method!r})")
    if tile < 16:
        raise InputError(f"tile size must be at least 16 pixels (got {tile})")
    parse_scheduler(scheduler)  # a bad address is an input error before any work
    job = job or Job()
    halo = model.config.patch_size // 2
    text_np = text.detach().cpu().numpy().astype(np.float32)
    outputs = OutputRasters(stack.grid, classes, class_path=class_path, confidence_path=confidence_path,
                            similarity_path=similarity_path, similarity_names=similarity_names, threshold=threshold,
                            k=text_np.shape[0])
    outputs.check()
    with stack.scan(tile, halo) as scan:  # the in-process windows (and order)
        windows = [(int(w.col_off), int(w.row_off), int(w.width), int(w.height)) for w in scan]
    spec = RunSpec(
        run_id=uuid.uuid4().hex, version=__version__, model_path=os.path.abspath(model_path),
        model_sha256=file_sha256(model_path), layers=tuple(stack.layers), reference=stack.reference,
        align=stack.align, grid=stack.grid, band_counts=tuple(stack.band_counts().items()), stats=stats,
        text=text_np, method=method, batch_size=batch_size, device=str(worker_device or "auto"),
        confidence=bool(confidence_path), similarity=bool(similarity_path), threshold=threshold,
        precision=str(dtype or torch.float32).split(".")[-1])
    job.report(0.0, f"connecting to the Dask scheduler {scheduler}")
    start = time.perf_counter()
    with contextlib.ExitStack() as ctx:
        client = ctx.enter_context(connect(scheduler))
        job.check()
        ctx.enter_context(gdal_cache_limit(GDAL_CACHE_MB))
        ctx.enter_context(outputs)
        writer = ctx.enter_context(ThreadPoolExecutor(1, thread_name_prefix="rsvl-write"))
        threads = _threads(client)
        log.info("Dask scheduler %s: %d worker thread(s); %d windows of %d pixels", client.scheduler.address,
                 threads, len(windows), tile)
        if not threads:
            log.warning("no Dask worker is connected to %s yet: the windows wait for one", scheduler)
        pending: Dict[str, tuple] = {}  # key -> (future, window)
        futures = as_completed(loop=client.loop)
        next_window = iter(enumerate(windows))
        checked = [time.monotonic()]

        def fill() -> None:
            nonlocal threads
            if time.monotonic() - checked[0] > 1.0:  # workers come and go
                threads, checked[0] = _threads(client), time.monotonic()
            while len(pending) < max(2, IN_FLIGHT_PER_THREAD * threads):
                item = next(next_window, None)
                if item is None:
                    return
                i, window = item
                fut = client.submit(score_window, spec, window, key=f"rsvl-window-{spec.run_id}-{i}", retries=RETRIES)
                pending[fut.key] = (fut, window)
                futures.add(fut)

        try:
            fill()
            done = 0
            pending_write: Optional[Future] = None
            valid = 0
            while not futures.is_empty():
                job.check()
                batch = futures.next_batch(block=False)
                if not batch:
                    time.sleep(POLL_S)
                    continue
                for fut in batch:
                    try:
                        scores = fut.result()
                    except KilledWorker as exc:
                        raise RsvlError(f"the Dask workers computing window {pending[fut.key][1]} (col, row, width, "
                                        f"height) died repeatedly ({exc}); see the workers' logs (memory limit?)") from exc
                    del pending[fut.key]
                    fut.release()
                    valid += int(scores.ok.sum())
                    if pending_write is not None:
                        pending_write.result()  # one block waits for the writer at most
                    pending_write = writer.submit(outputs.write, scores)
                    del scores
                    done += 1
                    job.report(done / len(windows), f"window {done}/{len(windows)} ({threads} worker threads)")
                fill()
            if pending_write is not None:
                pending_write.result()
        finally:
            if pending:  # cancelled or failed: queued windows never run, running ones are dropped
                client.cancel([f for f, _window in pending.values()], force=True)
        if not valid:  # as run_inference
            log.warning("%s", _no_valid_pixel(stack))
        outputs.finish()
        job.report(1.0, "inference finished")
    seconds = time.perf_counter() - start
    pixels = stack.width * stack.height
    log.info("inference on the cluster: %d pixels in %.1f s (%.0f pixels/s, %s)", pixels, seconds,
             pixels / max(seconds, 1e-9), method)
    return InferenceOutputs(class_path, confidence_path, similarity_path, pixels, seconds)
