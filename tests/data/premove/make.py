"""How the files here were made, kept as a record (not run by the tests): a model written by
rsvl 0.3.0 at commit 9d290f8, before backend/ was split into subpackages, with the class map
and similarity stack that version wrote. tests/test_backend_model_compat.py checks that the
current code loads the model and writes the same maps.

Run at 9d290f8 (a worktree at /tmp/pre, importable as ``rsvl`` from /tmp/prepkg/rsvl):
    python make.py OUT
"""

import sys
from pathlib import Path

sys.path.insert(0, "/tmp/prepkg")
sys.path.insert(1, "/tmp/pre/tests")

import conftest  # noqa: E402  (the test scene generator of that commit)
import torch  # noqa: E402
from transformers import AutoTokenizer, BertConfig, BertModel  # noqa: E402

from rsvl.backend import api  # noqa: E402
from rsvl.backend.raster import LayerSpec  # noqa: E402  (the old layout)
from rsvl.backend.text import builtin_minilm_path  # noqa: E402

out = Path(sys.argv[1])
scene = conftest.make_scene(out / "scene", size=24, seed=3, hsi_bands=8, modalities=("hsi", "lidar"))
# a tiny random text encoder keeps the model file under 1 MB (the fusion layer is 768 x text dim)
torch.manual_seed(0)
BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)).save_pretrained(out / "tinybert")
AutoTokenizer.from_pretrained(builtin_minilm_path()).save_pretrained(out / "tinybert")
layers = [LayerSpec(scene.paths["hsi"], "hsi"), LayerSpec(scene.paths["lidar"], "lidar")]
api.train(layers, str(scene.labels), str(out / "model.safetensors"), patch_size=5, epochs=3, batch_size=32, seed=0,
          device="cpu", text_encoder=str(out / "tinybert"))
api.classify(str(out / "model.safetensors"), layers, str(out / "classes.tif"), similarity=str(out / "similarity.tif"),
             device="cpu")
