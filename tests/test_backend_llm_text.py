"""LLM text encoders (issue 10, SATtxt's text side): a tiny random Llama saved to disk
with an offline tokenizer goes through the real loader; mean pooling ignores padding on
either side, the instruction counts, and embeddings are cached on disk, bit-identical,
never reused for a changed model."""

from __future__ import annotations

import pytest
import torch

from rsvl.backend.text import encoders as T

WORDS = ["forest", "water", "a", "of", "the", "dense", "river", "with", "long", "text", "about", "Instruct:",
         "describe", "land", "cover", "Query:", "grassland", "city"]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-llama")
    vocab = {w: i for i, w in enumerate(["<unk>", "</s>"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")  # no pad token
    fast.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    LlamaModel(config).save_pretrained(path)
    return path


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("RSVL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(T, "_CACHE", {})
    monkeypatch.setattr(T, "_ENCODERS", {})
    return tmp_path / "cache"


@pytest.mark.parametrize("side", ["right", "left"])
def test_mean_pooling_ignores_padding_on_either_side(tiny_llama, fresh, side):
    enc = T.TextEncoder(T.canonical_id(f"llm:{tiny_llama}"))
    enc.tokenizer.padding_side = side
    alone = enc._encode(["dense forest"])
    batched = enc._encode(["dense forest", "a long text about the river with water of the city"])
    torch.testing.assert_close(batched[0], alone[0], atol=2e-6, rtol=1e-5)
    assert torch.allclose(batched.norm(dim=1), torch.ones(2))
    assert enc.dim == 32


def test_the_instruction_changes_the_embedding_and_the_id(tiny_llama, fresh):
    plain = T.get_text_encoder(f"llm:{tiny_llama}")
    instructed = T.get_text_encoder(f"llm:{tiny_llama}|Instruct: describe land cover Query: ")
    assert plain.id != instructed.id and instructed.id.endswith("|Instruct: describe land cover Query: ")
    assert not torch.allclose(plain.encode(["forest"]), instructed.encode(["forest"]))


def test_embeddings_are_cached_on_disk_and_not_reused_for_a_changed_model(tiny_llama, fresh, monkeypatch):
    enc = T.get_text_encoder(f"llm:{tiny_llama}")
    first = enc.encode(["grassland", "water"])
    assert len(list(fresh.rglob("*.npy"))) == 2
    monkeypatch.setattr(T, "_CACHE", {})
    monkeypatch.setattr(T, "_ENCODERS", {})
    again = T.get_text_encoder(f"llm:{tiny_llama}")

    def no_model(*a, **k):
        raise AssertionError("the model ran although the embeddings were cached")

    monkeypatch.setattr(again, "_encode", no_model)
    assert torch.equal(again.encode(["grassland", "water"]), first)  # bit-identical, from disk
    config = tiny_llama / "config.json"
    config.write_text(config.read_text().replace('"rms_norm_eps"', '"rsvl_probe": 1, "rms_norm_eps"'))
    changed = T.TextEncoder(T.canonical_id(f"llm:{tiny_llama}"))
    assert changed.fingerprint != again.fingerprint
    calls = []
    original = changed._encode
    monkeypatch.setattr(changed, "_encode", lambda texts: calls.append(list(texts)) or original(texts))
    changed.encode(["grassland"])
    assert calls == [["grassland"]]  # the old entry was not used


def test_training_with_an_llm_text_encoder(tiny_llama, fresh, shared_scene, tmp_path):
    from rsvl.backend import api
    from rsvl.backend.io.raster import LayerSpec
    from rsvl.backend.models.modelfile import read_header

    layers = [LayerSpec(str(shared_scene.paths["hsi"]), "hsi"), LayerSpec(str(shared_scene.paths["lidar"]), "lidar")]
    res = api.train(layers, str(shared_scene.labels), str(tmp_path / "m.safetensors"), patch_size=5, epochs=15,
                    batch_size=64, learning_rate=3e-3, device="cpu", text_encoder=f"llm:{tiny_llama}",
                    prompt_template="the {} of the land")
    assert read_header(res.model_path).text_encoder == f"llm:{tiny_llama}"
    assert res.validation.oa > 0.6


def test_the_llm_runs_in_the_text_worker_as_in_process(tiny_llama, fresh):
    """QGIS runs text encoders in a child process: an LLM gives the same embeddings there."""
    from rsvl.backend.text import worker as textworker

    spec = f"llm:{tiny_llama}|Instruct: describe land cover Query: "
    try:
        remote = T.WorkerTextEncoder(T.canonical_id(spec))
        local = T.TextEncoder(T.canonical_id(spec))
        assert remote.dim == local.dim == 32
        assert torch.equal(remote.encode(["dense forest", "water"]), local.encode(["dense forest", "water"]))
    finally:
        textworker.stop_worker()
