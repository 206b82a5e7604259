"""Hugging Face model directories on disk: loading (safetensors only), token data, and ``lesion layers``
/ ``lesion analyze`` on a tiny random GPT-2 saved with an offline-built tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import lesion
from lesion.cli import app
from lesion.data import read_token_ids, token_sequences, tokenize_file
from lesion.errors import DataError, ModelFileError
from lesion.models.hf import load_hf_dir
from lesion.pipeline.classifier import open_any

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

runner = CliRunner()
SENTENCES = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat and a dog met on the mat",
    "the bird sang to the cat and the dog",
]
VOCAB, CONTEXT = 50, 32


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def tiny_gpt2(seed: int = 0):
    config = transformers.GPT2Config(
        n_layer=1, n_embd=16, n_head=4, vocab_size=VOCAB, n_positions=CONTEXT, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(config).eval()


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hf") / "gpt2"
    tiny_gpt2().save_pretrained(d, safe_serialization=True)
    word_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def text_file(model_dir) -> Path:
    path = model_dir.parent / "corpus.txt"
    path.write_text(" ".join(SENTENCES * 6) + "\n")
    return path


def test_loads_back_with_the_same_logits_and_tokenizer(model_dir):
    hf = load_hf_dir(model_dir)
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(hf.model(ids).logits, tiny_gpt2()(ids).logits)
    assert (hf.task, hf.context, hf.vocab_size) == ("causal-lm", CONTEXT, VOCAB)
    assert hf.tokenizer("the cat")["input_ids"] == word_tokenizer()("the cat")["input_ids"]
    assert not hf.model.training


def test_sharded_safetensors_load(tmp_path):
    tiny_gpt2().save_pretrained(tmp_path, safe_serialization=True, max_shard_size="4KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ids = torch.arange(8)[None]
    with torch.no_grad():
        assert torch.equal(load_hf_dir(tmp_path).model(ids).logits, tiny_gpt2()(ids).logits)


def test_layers_lists_heads_and_neurons(model_dir):
    result = invoke("layers", model_dir)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "transformer.h.0.attn" in out and "heads" in out and "head dim" in out
    assert "transformer.h.0.mlp.act" in out and "64" in out  # 4 x 16 MLP neurons
    row = next(line for line in out.splitlines() if "transformer.h.0.attn " in line)
    assert "│     4 │" in row and row.rstrip("│ ").endswith("4")  # 4 heads of head_dim 4


def direct_delta(model, data, unit: str) -> float:
    """The change in mean next-token loss when ``unit`` is deleted, computed by hand with ablate."""

    def loss() -> float:
        ids = data["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[:, :-1]
        return float(F.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1)))

    intact = loss()
    with lesion.ablate(model, unit):
        return loss() - intact


def test_analyze_text_matches_direct_ablation(model_dir, text_file, tmp_path):
    out = tmp_path / "an"
    result = invoke("analyze", model_dir, "--text", text_file, "--seq-len", "16", "--out", out,
                    "--repeats", "1", "--fractions", "3")  # fmt: skip
    assert result.exit_code == 0, result.output
    units = pd.read_parquet(out / "units.parquet")
    assert len(units) == 4 + 64 and set(units["kind"]) == {"head", "neuron"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "causal-lm" and summary["seq_len"] == 16
    assert {"curves.png", "unit_effects.png", "manifest.json"} <= {p.name for p in out.iterdir()}
    curves = pd.read_parquet(out / "curves.parquet")
    assert {"loss", "order", "fraction"} <= set(curves.columns)
    hf = load_hf_dir(model_dir)
    data = token_sequences(tokenize_file(text_file, hf.tokenizer), seq_len=16, vocab_size=VOCAB,
                           context=CONTEXT, max_sequences=64)  # fmt: skip
    assert summary["n_sequences"] == len(data["input_ids"])
    for layer, unit in (("transformer.h.0.attn", 2), ("transformer.h.0.mlp.act", 17)):
        row = units[(units["layer"] == layer) & (units["unit"] == unit)].iloc[0]
        assert row["delta_loss"] == pytest.approx(direct_delta(hf.model, data, f"{layer}:{unit}"), abs=1e-5)
    again = invoke("analyze", model_dir, "--text", text_file, "--out", out)
    assert again.exit_code == 2 and "--force" in again.output  # never clobbered


def test_pickle_only_directory_is_refused(tmp_path):
    model = tiny_gpt2()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelFileError, match=r"pytorch_model\.bin is a pickle.*safetensors"):
        load_hf_dir(tmp_path)
    result = invoke("layers", tmp_path)
    assert result.exit_code == 2 and "refuses to load pickles" in result.output
    result = invoke("layers", tmp_path, "--allow-pickle")
    assert result.exit_code == 0 and "transformer.h.0.attn" in result.output
    loaded = load_hf_dir(tmp_path, allow_pickle=True)  # opted in: tensors only, weights_only=True
    ids = torch.arange(6)[None]
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, model(ids).logits)


def test_sequence_longer_than_the_context(model_dir, text_file, tmp_path):
    result = invoke("analyze", model_dir, "--text", text_file, "--seq-len", "64", "--out", tmp_path / "x")
    assert result.exit_code == 2
    assert "64 tokens" in result.output and "context of 32" in result.output
    assert not (tmp_path / "x" / "units.parquet").exists()
    result = invoke("analyze", model_dir, "--out", tmp_path / "y")
    assert result.exit_code == 2 and "pass --text FILE" in result.output
    result = invoke("analyze", model_dir, "--dataset", "digits", "--text", text_file, "--out", tmp_path / "y")
    assert result.exit_code == 2 and "names an image dataset" in result.output


def test_token_id_beyond_the_vocabulary(model_dir, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("1 2 3 4 5 60 7 8 9 10")
    result = invoke("analyze", model_dir, "--tokens", ids, "--seq-len", "4", "--out", tmp_path / "x")
    assert result.exit_code == 2
    assert "token id 60" in result.output and "vocabulary of 50" in result.output
    with pytest.raises(DataError, match="the tokenizer in"):
        token_sequences(np.array([3, 99]), vocab_size=VOCAB, tokenizer=load_hf_dir(model_dir).tokenizer_name)


def test_tokenizer_larger_than_the_model_vocabulary(tmp_path):
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=4, vocab_size=10, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)  # fmt: skip
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path, safe_serialization=True)
    word_tokenizer().save_pretrained(tmp_path)  # about 20 words
    with pytest.raises(ModelFileError, match=r"tokenizer has \d+ tokens but the model's vocabulary has 10"):
        load_hf_dir(tmp_path)


def test_bad_directories(model_dir, tmp_path):
    with pytest.raises(ModelFileError, match=r"has no config\.json"):
        load_hf_dir(tmp_path)
    with pytest.raises(ModelFileError, match="is a directory; expected a model file"):
        open_any(tmp_path)  # no config.json: neither kind of model
    (tmp_path / "config.json").write_text((model_dir / "config.json").read_text())
    with pytest.raises(ModelFileError, match="holds no weights"):
        load_hf_dir(tmp_path)
    raw = (model_dir / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelFileError, match=r"model\.safetensors is unreadable.*truncated"):
        load_hf_dir(tmp_path)
    from safetensors.torch import load_file, save_file

    state = load_file(model_dir / "model.safetensors")
    del state["transformer.h.0.mlp.c_fc.weight"]
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match=r"lack 1 tensor.*mlp\.c_fc\.weight"):
        load_hf_dir(tmp_path)  # never silently random weights
    (tmp_path / "model.safetensors").write_bytes(raw)
    config = json.loads((model_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "vocab_size": 60}))
    with pytest.raises(ModelFileError, match=r"transformer\.wte\.weight \[50, 16\] \(expected \[60, 16\]\)"):
        load_hf_dir(tmp_path)  # weights of another vocabulary size
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_hf_dir(tmp_path)


def test_token_files_and_empty_text(tmp_path):
    ids = np.arange(12, dtype=np.int32)
    np.save(tmp_path / "a.npy", ids)
    np.savez(tmp_path / "b.npz", input_ids=ids.reshape(3, 4))
    from safetensors.numpy import save_file

    save_file({"tokens": ids.astype(np.int64)}, str(tmp_path / "c.safetensors"))
    (tmp_path / "d.txt").write_text(" ".join(map(str, ids)) + "\n")
    for name in ("a.npy", "b.npz", "c.safetensors", "d.txt"):
        assert read_token_ids(tmp_path / name).tolist() == list(range(12)), name
    (tmp_path / "e.txt").write_text("1 2 cat")
    with pytest.raises(DataError, match="'cat' is not a token id"):
        read_token_ids(tmp_path / "e.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="holds no text"):
        tokenize_file(tmp_path / "empty.txt", word_tokenizer())
    with pytest.raises(DataError, match="holds 0 token"):
        token_sequences(np.zeros(0, dtype=np.int64))
    seqs = token_sequences(ids, seq_len=5, vocab_size=12, context=8)["input_ids"]
    assert seqs.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]] and seqs.dtype == torch.long


def test_hf_image_classifier_directory_gets_the_classifier_study(tmp_path):
    config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16,
                                    num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                    num_labels=10)  # fmt: skip
    torch.manual_seed(0)
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "vit", safe_serialization=True)
    _, info = open_any(tmp_path / "vit")
    assert info["arch"]["task"] == "image-classification" and info["arch"]["input_shape"] == [1, 8, 8]
    result = invoke("layers", tmp_path / "vit")
    assert result.exit_code == 0 and "vit.layers.0.attention" in result.output
    out = tmp_path / "an"
    result = invoke("analyze", tmp_path / "vit", "--dataset", "digits", "--out", out, "--repeats", "1",
                    "--fractions", "3", "--noise-repeats", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    units = pd.read_parquet(out / "units.parquet")
    assert len(units) == 2 + 32 and "selectivity" in units
    result = invoke("analyze", tmp_path / "vit", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "--dataset" in result.output


def test_llama_with_grouped_query_attention_and_a_text_classifier(tmp_path):
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=60,
                                      max_position_embeddings=24, bos_token_id=0, eos_token_id=0)  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "llama", safe_serialization=True)
    result = invoke("layers", tmp_path / "llama")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "model.layers.0.self_attn " in line)
    assert "│     4 │" in row  # 4 query heads, though keys and values have 2
    assert "model.layers.0.mlp.act_fn" in result.output
    np.save(tmp_path / "ids.npy", np.arange(100) % 60)
    args = ("analyze", tmp_path / "llama", "--tokens", tmp_path / "ids.npy", "--out", tmp_path / "x")
    result = invoke(*args, "--seq-len", "32")
    assert result.exit_code == 2 and "32 tokens are longer than the model's context of 24" in result.output
    config = transformers.BertConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, vocab_size=40, max_position_embeddings=16,
                                     num_labels=3)  # fmt: skip
    bert = transformers.BertForSequenceClassification(config)
    bert.save_pretrained(tmp_path / "bert", safe_serialization=True)
    result = invoke("layers", tmp_path / "bert")
    assert result.exit_code == 0 and "bert.encoder.layer.0.attention" in result.output
    result = invoke("analyze", tmp_path / "bert", "--tokens", tmp_path / "ids.npy", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "is a text classifier" in result.output
