"""rsvl as a guest in QGIS's process (issue 14): triton and transformers stay out of the
host, text encoders run in a child process and give the same embeddings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from rsvl.backend.errors import TextEncoderError
from rsvl.backend.runtime import dependencies
from rsvl.backend.text import encoders as text
from rsvl.backend.text import worker as textworker


@pytest.fixture
def worker_encoder():
    def make(spec):
        return text.WorkerTextEncoder(text.canonical_id(spec))

    yield make
    textworker.stop_worker()


def test_worker_gives_the_same_embeddings_as_in_process(worker_encoder, tiny_hf_encoder):
    prompts = ["a multispectral satellite image of forest", "flooded fields", "greenhouses"]
    for spec in ("minilm", str(tiny_hf_encoder)):
        local = text.TextEncoder(text.canonical_id(spec))
        remote = worker_encoder(spec)
        assert remote.dim == local.dim
        assert torch.equal(remote.encode(prompts), local.encode(prompts))


def test_worker_passes_load_errors_back(worker_encoder, tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(TextEncoderError, match="cannot load the Hugging Face text encoder"):
        worker_encoder(str(tmp_path))


def test_worker_restarts_after_it_died(worker_encoder):
    first = worker_encoder("minilm")
    before = first.encode(["forest"])
    textworker._worker._proc.kill()
    textworker._worker._proc.wait()
    text._CACHE.clear()
    assert torch.equal(first.encode(["forest"]), before)


def test_python_executable_matches_this_version():
    exe = dependencies.python_executable()
    out = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    assert out.stdout.strip() == str(sys.version_info[:2])


HOST_SCRIPT = """
import json, sys
from rsvl.backend.runtime import host
host.embed()
from rsvl.backend import api
from rsvl.backend.io.raster import LayerSpec
cfg = json.loads(sys.argv[1])
layers = [LayerSpec(p, m) for m, p in cfg["layers"]]
state = {}
def snapshot():
    return {name: ("blocked" if sys.modules.get(name, 0) is None else name in sys.modules)
            for name in ("triton", "torch._dynamo", "transformers", "open_clip")}
api.classify(cfg["model"], layers, cfg["out"] + "/classes.tif")
api.query(cfg["model"], layers, ["water", "woodland"], cfg["out"] + "/similarity.tif")
state["after_classify_query"] = snapshot()
api.train(layers, cfg["labels"], cfg["out"] + "/model.safetensors", epochs=2, patch_size=5, device="cpu")
state["after_train"] = snapshot()
print(json.dumps(state))
"""


def test_host_process_never_loads_triton_or_transformers(trained_model, shared_scene, tmp_path):
    model_path, _result, layers = trained_model
    cfg = {"model": str(model_path), "layers": [(s.modality, s.path) for s in layers],
           "labels": str(shared_scene.labels), "out": str(tmp_path)}
    env = {k: v for k, v in os.environ.items() if k != "RSVL_ALLOW_TRITON"}
    out = subprocess.run([sys.executable, "-c", HOST_SCRIPT, json.dumps(cfg)], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    state = json.loads(out.stdout.strip().splitlines()[-1])
    assert state["after_classify_query"] == {"triton": "blocked", "torch._dynamo": False, "transformers": False,
                                             "open_clip": False}
    # torch's own optimiser imports torch._dynamo; triton stays blocked all the same.
    after = state["after_train"]
    assert after["triton"] == "blocked" and after["transformers"] is False and after["open_clip"] is False
    assert (tmp_path / "similarity.tif").exists() and (tmp_path / "model.safetensors").exists()


DEEPBIND_SCRIPT = """
import importlib.util, sys
from rsvl.backend.runtime import dependencies, host
host.embed()
dependencies.check()  # looks torch up (find_spec) before anything imports it, as every algorithm does
assert importlib.util.find_spec("torch") is not None
import torch
print(type(torch.__spec__.loader).__name__)
"""


@pytest.mark.skipif(not hasattr(os, "RTLD_DEEPBIND"), reason="RTLD_DEEPBIND is Linux's")
def test_dependency_check_before_import_keeps_torch_deep_bound():
    """A look-up of torch that imports nothing must not use up the deep-bind import (inside QGIS
    torch would then bind QGIS's BLAS and train other numbers than the command line)."""
    env = {k: v for k, v in os.environ.items() if k != "RSVL_TORCH_DEEPBIND"}
    out = subprocess.run([sys.executable, "-c", DEEPBIND_SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "_DeepBindLoader"
