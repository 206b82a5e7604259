"""`lesion layers` on the real architectures the scale work targets, built from their configs (random
weights; fewer blocks where a full-depth model would be slow to build): GPT-2 small, BERT-base,
ViT-B/16, ResNet-50 (Hugging Face's ResNetForImageClassification) and a Llama-style model with
grouped-query attention."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from lesion.cli import app

tf = pytest.importorskip("transformers")


def configs():
    """name: (model, sites that must be listed)."""
    return {
        "gpt2-small": (lambda: tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2)),  # 768 wide, 12 heads, 3,072
                       ["transformer.h.1.mlp.act", "transformer.h.1.attn"], ["3072", "12"]),
        "bert-base": (lambda: tf.BertForSequenceClassification(tf.BertConfig(num_hidden_layers=2)),
                      ["bert.encoder.layer.1.intermediate.intermediate_act_fn",
                       "bert.encoder.layer.1.attention"], ["3072", "12"]),
        "vit-b16": (lambda: tf.ViTForImageClassification(tf.ViTConfig(num_hidden_layers=2, num_labels=3)),
                    ["vit.layers.1.mlp.activation_fn", "vit.layers.1.attention"],
                    ["3072", "12"]),
        "resnet-50": (lambda: tf.ResNetForImageClassification(tf.ResNetConfig(
            layer_type="bottleneck", depths=[1, 1, 1, 1], hidden_sizes=[256, 512, 1024, 2048], num_labels=3)),
                      ["resnet.encoder.stages.3.layers.0.activation",
                       "resnet.encoder.stages.3.layers.0.layer.1.activation"], ["2048"]),
        "llama-gqa": (lambda: tf.LlamaForCausalLM(tf.LlamaConfig(
            num_hidden_layers=2, hidden_size=2048, intermediate_size=8192, num_attention_heads=32,
            num_key_value_heads=8, vocab_size=1024)),
                      ["model.layers.1.mlp.act_fn", "model.layers.1.self_attn"], ["8192", "32"]),
    }  # fmt: skip


@pytest.mark.parametrize("name", list(configs()))
def test_layers_lists_the_sites_of_real_architectures(name, tmp_path):
    make, names, widths = configs()[name]
    model = make()
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(tmp_path, safe_serialization=True)
    result = CliRunner().invoke(app, ["layers", str(tmp_path)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for site in names:
        assert site in result.output, (site, result.output[-3000:])
    for w in widths:
        assert f" {w} " in result.output
    if name == "resnet-50":  # what lesion assumed is printed as a note, not raised
        assert "note: " in result.output and "224 x 224" in result.output
