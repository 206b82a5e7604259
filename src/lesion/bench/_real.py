"""Real model sizes for W8-W11: GPT-2 small and a ~1 B Llama-style model with grouped-query attention,
built from their configs (random weights: no hub is reachable, and the work does not depend on the
weights), seeded random tokens, and lesion beside a hook loop in the same run.

The hook loop (one full forward pass per unit, a hook zeroing the unit) is timed on ``real_peer_units``
units spread over the list and extrapolated; its numbers are checked against lesion's on those units
first. Units per second and the process's peak resident memory (``ru_maxrss`` after the workload: the
peak of the whole bench process so far) are reported, on a GPU also the peak of its allocated memory.

``ctx.device`` and ``ctx.precision`` (``lesion bench --device cuda --precision bf16``) put the model and
the tokens on that device and run lesion (``precision="bf16"``: autocast) and the hook loop (the same
autocast) there; on a GPU each timing waits for the device (``torch.cuda.synchronize``). In bf16 the two
are compared at a looser tolerance (``TOLERANCE``): they round differently. A workload not run on a GPU
carries ``gpu: {"status": "not measured"}``, which the table prints as such.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Sequence

import numpy as np
import torch

from lesion.bench._common import _Context, _median

GPU = {"device": "cuda", "precision": "bf16", "status": "not measured"}
TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2}  # largest |hook loop - lesion| loss, relative to max(1, loss)


def gpu(ctx: _Context) -> dict:
    """What the workload says about the GPU: measured here (device, precision, card), or not measured."""
    if not ctx.device.startswith("cuda"):
        return dict(GPU)
    return {"device": ctx.device, "precision": ctx.precision, "status": "measured",
            "name": torch.cuda.get_device_name(torch.device(ctx.device))}  # fmt: skip


def on_device(ctx: _Context) -> dict:
    """The run's device and precision, its GPU status, and the peak memory (RSS; a GPU's allocations)."""
    out = {"device": ctx.device, "precision": ctx.precision, "gpu": gpu(ctx), "peak_rss_mb": peak_mb()}
    if ctx.device.startswith("cuda"):
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(torch.device(ctx.device)) / 2**20
    return out


def clock(ctx: _Context) -> float:
    """``time.perf_counter()`` once the device has finished its queued work."""
    if ctx.device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(ctx.device))
    return time.perf_counter()


def autocast(ctx: _Context):
    """bf16 autocast on the run's device where ``ctx.precision`` asks for it (lesion's own ``precision``)."""
    kind = torch.device(ctx.device).type
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=ctx.precision == "bf16")


def gpt2_small(sizes) -> torch.nn.Module:
    """GPT-2 small from ``GPT2Config()`` (12 blocks, 768 wide, 12 heads, 3,072 neurons, 50,257 tokens);
    in quick mode a 2-block, 64-wide model of the same architecture."""
    import transformers as tf

    if sizes.real_quick:
        config = tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_inner=256, vocab_size=512, use_cache=False)
    else:
        config = tf.GPT2Config(use_cache=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return tf.GPT2LMHeadModel(config).eval()


def llama_1b(sizes) -> torch.nn.Module:
    """A Llama-3.2-1B-shaped model (16 blocks, 2,048 wide, 32 query heads sharing 8 key/value heads,
    8,192 neurons, 128,256 tokens, tied embeddings: 1.24 B parameters, 5 GB in fp32); quick: 2 blocks,
    64 wide, 4 query heads over 2 key/value heads."""
    import transformers as tf

    if sizes.real_quick:
        dims = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=512)  # fmt: skip
    else:
        dims = dict(num_hidden_layers=16, hidden_size=2048, intermediate_size=8192, num_attention_heads=32,
                    num_key_value_heads=8, vocab_size=128256)  # fmt: skip
    config = tf.LlamaConfig(**dims, tie_word_embeddings=True, use_cache=False, max_position_embeddings=2048)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return tf.LlamaForCausalLM(config).eval()


def tokens(sizes, vocab: int, device: str = "cpu") -> list[dict]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (sizes.real_sequences, sizes.real_tokens), generator=g)
    return [{"input_ids": b.to(device)} for b in ids.split(sizes.real_batch)]


def lesion_sweep(model, data, units: Sequence[str], precision: str = "fp32", **kw):
    from lesion.analyses.sweep import sweep
    from lesion.core.metric_lm import NextTokenLoss

    size = len(data[0]["input_ids"])
    return sweep(model, data, list(units), NextTokenLoss(), batch_size=size, precision=precision, **kw)


def hook_loop(model, data, units: Sequence[str], ctx: _Context | None = None) -> np.ndarray:
    """Mean next-token loss with each unit deleted alone, one full forward pass per unit (``ablate``),
    under ``ctx``'s autocast (none without a context)."""
    from contextlib import nullcontext

    from lesion.core.lesions import ablate
    from lesion.core.sites import find_sites

    sites = find_sites(model, data[0])
    out = np.zeros(len(units))
    for k, u in enumerate(units):
        total = count = 0.0
        with torch.no_grad(), ablate(model, u, sites=sites), autocast(ctx) if ctx else nullcontext():
            for b in data:
                ids = b["input_ids"]
                logits = model(input_ids=ids).logits[:, :-1].float()
                total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(),
                                                                 reduction="sum"))  # fmt: skip
                count += ids[:, 1:].numel()
        out[k] = total / count
    return out


def beside_hook_loop(ctx: _Context, model, data, units: Sequence[str], description: str, **kw) -> dict:
    """lesion's sweep of ``units`` (median of ``ctx.repeats``) and the hook loop on a spread subset,
    checked against each other, with units/s and the peak memory."""
    times, df = [], None
    for _ in range(ctx.repeats):
        start = clock(ctx)
        df = lesion_sweep(model, data, units, ctx.precision, **kw)
        times.append(clock(ctx) - start)
    stride = max(1, len(units) // ctx.sizes.real_peer_units)
    idx = list(range(0, len(units), stride))
    start = clock(ctx)
    ref = hook_loop(model, data, [units[i] for i in idx], ctx)
    t_hook = (clock(ctx) - start) * len(units) / len(idx)
    diff = agree(ctx, description, ref, df["loss"].to_numpy()[idx])
    t = _median(times)
    return {
        "description": description, "n_lesions": len(units), "peer_units_timed": len(idx),
        "seconds": {"lesion": t, "hook_loop": t_hook}, "floor_seconds": {},
        "ratios": {"hook_loop/lesion": t_hook / t, "lesion/floor": None},
        "units_per_second": {"lesion": len(units) / t, "hook_loop": len(units) / t_hook},
        "max_abs_diff": {"hook_loop": {"loss": diff}}, "runs": {"lesion": times},
        "engine": {"served": df.attrs["served"], **df.attrs["engine_fallbacks"]}, **on_device(ctx),
    }  # fmt: skip


def agree(ctx: _Context, what: str, ref: np.ndarray, got: np.ndarray) -> float:
    """The largest |hook loop - lesion| loss; RuntimeError beyond ``TOLERANCE`` for the run's precision."""
    diff = float(np.abs(ref - got).max())
    if diff > TOLERANCE[ctx.precision] * max(1.0, float(np.abs(ref).max())):
        raise RuntimeError(f"{what}: the hook loop's loss differs from lesion's by {diff:.3g}")
    return diff


def peak_mb() -> float:
    """The bench process's peak resident memory so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def shared(ctx: _Context, name: str, build):
    """A model built once per bench run, moved to the run's device and kept on the context."""
    if name not in ctx.__dict__:
        ctx.__dict__[name] = build(ctx.sizes).to(ctx.device)
    if ctx.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(torch.device(ctx.device))  # each workload's own peak
    return ctx.__dict__[name]
