"""The module-prefix engine's checks on a spread subset of every batch (``runner.check_examples``): the
checked lesions are scored by the engine on those examples too and re-run there on the hooked model; a
wrong engine is still caught (its group goes to the slow path, with the reason), the numbers do not depend
on the rule, and a replacement that is not a per-unit constant keeps the check on every example."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lesion
import lesion.engine.prefix as prefix
import lesion.engine.prefixserve as prefixserve
from lesion.core.batch import Batch
from lesion.core.runner import SPREAD, check_examples
from lesion.core.sites import find_sites

transformers = pytest.importorskip("transformers")


def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_inner=64, vocab_size=40,
                                     n_positions=16, bos_token_id=0, eos_token_id=0,
                                     use_cache=False)  # fmt: skip
    return transformers.GPT2LMHeadModel(config).eval()


def tokens(n: int, seed: int = 1) -> dict:
    return {"input_ids": torch.randint(0, 40, (n, 12), generator=torch.Generator().manual_seed(seed))}


def heads(model, data) -> list[str]:
    return [f"{s.name}:{h}" for s in find_sites(model, data) if s.heads for h in range(s.width)]


def batch_of(n: int) -> Batch:
    return Batch(args=(torch.arange(n),), ids=torch.arange(n))


@pytest.mark.parametrize(
    ("n", "want"),
    [(0, []), (1, [0]), (5, [0, 1, 2, 3, 4]), (8, list(range(8))), (9, [0, 1, 2, 3, 5, 6, 7, 8])],
)
def test_a_batch_of_up_to_eight_is_checked_whole_and_a_larger_one_on_eight_or_more(n, want):
    assert check_examples(batch_of(n)).tolist() == want


def test_a_large_batch_is_checked_on_one_example_in_eight_from_first_to_last():
    got = check_examples(batch_of(64)).tolist()
    assert got == [0, 9, 18, 27, 36, 45, 54, 63]  # linspace(0, 63, 8) rounded
    big = check_examples(batch_of(1000)).tolist()
    assert len(big) == 125 and big[0] == 0 and big[-1] == 999 and len(set(big)) == 125
    assert max(np.diff(big)) - min(np.diff(big)) <= 1  # evenly spread


def forwarded(model):
    """Examples the model's forward sees, call by call."""
    seen: list[int] = []
    handle = model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(len(kwargs.get("input_ids", args[0] if args else None))),
        with_kwargs=True,
    )
    return seen, handle


@pytest.mark.parametrize("replacement", [0.0, "mean"])
def test_the_checks_run_on_the_subset_and_the_numbers_do_not_depend_on_it(replacement, monkeypatch):
    model, data = gpt2(), tokens(40)
    lesions = [lesion.Lesion([u], replacement) for u in heads(model, data)]
    metric = lesion.metrics.NextTokenLoss()
    seen, handle = forwarded(model)
    sub = lesion.sweep(model, data, lesions, metric, batch_size=20)
    handle.remove()
    checks_on_subset = [k for k in seen if k == SPREAD]  # 2 batches of 20: 8 of each re-run
    assert len(checks_on_subset) == 2 * 2 * 2  # 2 sites x CHECKS lesions x 2 batches
    monkeypatch.setattr(prefixserve, "SUBSET_CHECKS", False)
    seen, handle = forwarded(model)
    whole = lesion.sweep(model, data, lesions, metric, batch_size=20)
    handle.remove()
    assert SPREAD not in seen
    assert sub.attrs["served"]["prefix"] == whole.attrs["served"]["prefix"] == len(lesions)
    for df in (sub, whole):
        assert not [k for k in df.attrs["engine_fallbacks"] if k.startswith("prefix")]
    for col in ("loss", "accuracy"):
        np.testing.assert_array_equal(sub[col].to_numpy(), whole[col].to_numpy())
    slow = lesion.sweep(model, data, lesions, metric, batch_size=20, engine=False)
    np.testing.assert_allclose(sub["loss"], slow["loss"], rtol=1e-5, atol=1e-6)


def test_an_engine_wrong_on_every_example_is_caught_by_the_subset_check(monkeypatch):
    """The closed form of the heads of block 1 made wrong (the attention's output tripled): that
    site's group fails its subset check and runs on the hooked model, the other site stays on the engine."""
    model, data = gpt2(), tokens(40)
    units = heads(model, data)
    real = prefix.head_output

    def wrong(*args):
        got = real(*args)
        if args[1].name != "transformer.h.1.attn":
            return got
        return got * 3 if isinstance(got, torch.Tensor) else type(got)([got[0] * 3, *got[1:]])

    monkeypatch.setattr(prefix, "head_output", wrong)
    metric = lesion.metrics.NextTokenLoss()
    fast = lesion.sweep(model, data, units, metric, batch_size=20)
    slow = lesion.sweep(model, data, units, metric, batch_size=20, engine=False)
    assert "engine gave loss" in fast.attrs["engine_fallbacks"]["prefix:transformer.h.1.attn"]
    assert "prefix:transformer.h.0.attn" not in fast.attrs["engine_fallbacks"]
    assert fast.attrs["served"]["prefix"] == 4
    np.testing.assert_allclose(fast["loss"], slow["loss"], rtol=1e-5, atol=1e-6)


def test_a_replacement_drawn_from_other_examples_is_checked_on_every_example():
    """Resampling draws each example's value from another example of the batch: on a subset the draws
    would differ, so its check re-runs the whole batch (no pass over the subset alone)."""
    model, data = gpt2(), tokens(40)
    units = [u for u in heads(model, data) if u.startswith("transformer.h.1.")]
    lesions = [lesion.Lesion([u], lesion.replacements.Resample(seed=0)) for u in units]
    metric = lesion.metrics.NextTokenLoss()
    seen, handle = forwarded(model)
    fast = lesion.sweep(model, data, lesions, metric, batch_size=20)
    handle.remove()
    assert SPREAD not in seen
    slow = lesion.sweep(model, data, lesions, metric, batch_size=20, engine=False)
    np.testing.assert_allclose(fast["loss"], slow["loss"], rtol=1e-5, atol=1e-6)
