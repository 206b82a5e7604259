"""Silent wrong numbers on transformers in the Python API (issue 30, item 6): context length and
vocabulary are checked as ``lesion analyze`` checks them; a lesion at a position the metric does not
score gets a LesionNote; Mean and PositionalMean leave padded positions out, as the metrics do."""

from __future__ import annotations

import warnings

import pytest
import torch

import lesion
from lesion.core.sites import find_sites
from lesion.errors import DataError, LesionNote

transformers = pytest.importorskip("transformers")
VOCAB, CONTEXT = 50, 16
ACT = "transformer.h.0.mlp.act"


@pytest.fixture(scope="module")
def gpt2():
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=4, vocab_size=VOCAB, n_positions=CONTEXT,
                                     bos_token_id=0, eos_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def llama():
    config = transformers.LlamaConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                      num_attention_heads=2, vocab_size=VOCAB, max_position_embeddings=12,
                                      bos_token_id=0, eos_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def ids(n: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


def test_sequences_longer_than_the_context_are_refused(gpt2, llama):
    with pytest.raises(DataError, match="sequences of 20 tokens are longer than the model's context of 16"):
        lesion.sweep(gpt2, {"input_ids": ids(3, 20)}, [f"{ACT}:0"], lesion.metrics.NextTokenLoss())
    # Llama's rotary positions run past max_position_embeddings without an error: silently wrong before
    with pytest.raises(DataError, match="sequences of 14 tokens are longer than the model's context of 12"):
        lesion.sweep(
            llama, {"input_ids": ids(3, 14)}, ["model.layers.0.mlp.act_fn:0"], lesion.metrics.NextTokenLoss()
        )
    with pytest.raises(DataError, match="context of 16"):
        lesion.find_sites(gpt2, {"input_ids": ids(1, 17)})


def test_token_ids_outside_the_vocabulary_are_refused(gpt2):
    x = ids(3, 8)
    x[1, 4] = VOCAB + 10
    with pytest.raises(DataError, match=r"token id 60 is outside the model's vocabulary of 50.*batch 0"):
        sites = lesion.find_sites(gpt2, {"input_ids": ids(1, 8)})
        lesion.sweep(gpt2, {"input_ids": x}, [f"{ACT}:0"], lesion.metrics.NextTokenLoss(), sites=sites)
    with pytest.raises(DataError, match="token id 60 is outside"):
        lesion.find_sites(gpt2, {"input_ids": x})


def test_a_lesion_only_at_the_last_position_gets_a_note(gpt2):
    data = {"input_ids": ids(4, 10)}
    with pytest.warns(LesionNote, match=r"act:17@-1.*change only the last position \(of 10\).*@-2"):
        df = lesion.sweep(gpt2, data, [f"{ACT}:17@-1", f"{ACT}:17@9"], lesion.metrics.NextTokenLoss())
    assert (df["delta_loss"] == 0).all()  # what the note says: it cannot change the loss
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a position that predicts a scored token: no note
        df = lesion.sweep(
            gpt2, data, [f"{ACT}:17@-2", f"{ACT}:17", f"{ACT}:17@-1,3"], lesion.metrics.NextTokenLoss()
        )
    assert (df["delta_loss"] != 0).all()


def padded() -> dict[str, torch.Tensor]:
    x = ids(3, 8, seed=5)
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[0, 5:] = 0  # right padding of different lengths
    mask[2, 2:] = 0
    x[mask == 0] = 0
    return {"input_ids": x, "attention_mask": mask}


def activations(model, data) -> torch.Tensor:
    got = []
    handle = dict(model.named_modules())[ACT].register_forward_hook(lambda m, i, o: got.append(o.detach()))
    with torch.no_grad():
        model(**data)
    handle.remove()
    return got[0].double()  # (batch, positions, neurons)


def test_mean_and_positional_mean_leave_padding_out(gpt2):
    data = padded()
    sites = find_sites(gpt2, data, [ACT])
    by_name = {s.name: s for s in sites}
    a, mask = activations(gpt2, data), data["attention_mask"].double()
    hand = (a * mask[..., None]).sum((0, 1)) / mask.sum()  # every kept position counts once
    fitted = lesion.replacements.Mean().fit(gpt2, data, by_name, [])
    assert torch.allclose(fitted.means[ACT].double(), hand, atol=1e-6)
    assert not torch.allclose(a.mean((0, 1)), hand, atol=1e-3)  # the padded mean differs
    hand_t = (a * mask[..., None]).sum(0) / mask.sum(0)[:, None]  # (positions, neurons)
    lesions = [lesion.Lesion(lesion.parse_units(f"{ACT}:0"), lesion.replacements.PositionalMean())]
    fitted = lesion.replacements.PositionalMean().fit(gpt2, data, by_name, lesions)
    assert torch.allclose(fitted.means[ACT].double(), hand_t, atol=1e-6)


def test_mean_without_a_mask_is_unchanged(gpt2):
    data = {"input_ids": ids(3, 8)}
    sites = {s.name: s for s in find_sites(gpt2, data, [ACT])}
    a = activations(gpt2, data)
    assert torch.allclose(
        lesion.replacements.Mean().fit(gpt2, data, sites, []).means[ACT].double(), a.mean((0, 1)), atol=1e-6
    )
