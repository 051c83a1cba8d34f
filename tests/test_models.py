import json
import socket
import time

import pytest
import torch

from mathtune import models
from mathtune.errors import MathtuneError


def test_gguf_is_dequantized_once_into_a_safetensors_cache(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("MATHTUNE_CACHE", str(tmp_path))
    folder = models.ensure_local(models.SMOLLM2)
    files = {p.name for p in (tmp_path / models.SMOLLM2).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert "quantization_config" not in json.loads((tmp_path / models.SMOLLM2 / "config.json").read_text())

    # The cached weights are the GGUF's weights: same logits as loading the GGUF directly.
    gguf_dir, gguf_file = models._gguf_source(models.SMOLLM2)
    direct = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
    cached = AutoModelForCausalLM.from_pretrained(folder)
    assert getattr(cached.config, "quantization_config", None) is None
    ids = torch.tensor([[1, 9690, 198, 2683, 314]])
    with torch.no_grad():
        assert torch.allclose(direct(ids).logits, cached(ids).logits, atol=1e-5)

    # Reused on the next call: nothing is written again.
    stamp = (tmp_path / models.SMOLLM2 / "model.safetensors").stat().st_mtime_ns
    start = time.time()
    assert models.ensure_local(models.SMOLLM2) == folder
    assert time.time() - start < 1
    assert (tmp_path / models.SMOLLM2 / "model.safetensors").stat().st_mtime_ns == stamp


def test_tiny_model_is_a_two_layer_llama():
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(models.ensure_local(models.TINY))
    assert config.model_type == "llama" and config.num_hidden_layers == 2


def test_local_path_without_weights(tmp_path):
    with pytest.raises(MathtuneError, match="no config.json"):
        models.ensure_local(str(tmp_path))


def test_hub_ids_pass_through_when_the_hub_answers(monkeypatch):
    """A listening local socket stands in for the hub: the id is handed to transformers unchanged."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        assert models.ensure_local("google/gemma-2-9b") == "google/gemma-2-9b"


def test_hub_ids_fail_at_once_when_the_hub_is_unreachable(monkeypatch):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]  # closed again below: nothing listens there
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(MathtuneError, match="cannot be reached"):
        models.ensure_local("google/gemma-2-9b")


@pytest.mark.parametrize("name", ["/no/such/folder", "./missing", "a/b/c", "bad id!"])
def test_missing_paths_and_bad_ids_name_the_key(name):
    with pytest.raises(MathtuneError, match="model.name"):
        models.ensure_local(name)


@pytest.mark.slow
def test_gemma3_assembles_and_loads(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("MATHTUNE_CACHE", str(tmp_path))
    folder = models.ensure_local(models.GEMMA3)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.model_type == "gemma3_text"
    assert sum(p.numel() for p in model.parameters()) == 268_098_176
    tok = AutoTokenizer.from_pretrained(folder)
    assert not tok.chat_template  # a base model: the plain prompt format
    assert tok("Question: 1+1?\nAnswer:")["input_ids"][0] == tok.bos_token_id  # Gemma needs BOS


def test_one_gguf_reader_serves_every_read_while_dequantizing():
    import gguf

    original = gguf.GGUFReader
    folder, name = models._gguf_source(models.SMOLLM2)
    with models._gguf_read_once():
        first = gguf.GGUFReader(folder / name)
        assert gguf.GGUFReader(folder / name) is first and isinstance(first, original)
    assert gguf.GGUFReader is original


def test_a_cache_folder_written_by_two_processes_at_once_is_kept_whole(tmp_path):
    """Two runs (or two test workers) starting on a fresh machine both build the same cache folder: the one that
    finishes second keeps the first one's folder and leaves no temporary folder behind."""
    final = tmp_path / "model"

    def fill_after_the_other(tmp):
        (tmp / "config.json").write_text("second")
        models._write_folder_atomically(final, lambda t: (t / "config.json").write_text("first"))

    assert models._write_folder_atomically(final, fill_after_the_other) == final
    assert (final / "config.json").read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["model"]
