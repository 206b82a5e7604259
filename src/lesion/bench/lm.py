"""W5-W7: every MLP neuron and every attention head of a small GPT-style model, and the attribution
estimate against the exact sweep, timed against the peers researchers use on transformers.

The model is Hugging Face's GPT-2 architecture at 4 blocks, d_model 256, 1,024 MLP neurons and 8 heads
per block, a 1,024-token vocabulary, seed-0 random weights (the work does not depend on training); the
data 64 seeded random sequences of 128 tokens; the metric next-token loss and accuracy over every
predicted token. Peers, each on the same weights in this process, where it installs:
- a hook loop: one full forward pass per unit, a forward hook zeroing the neuron (a pre-hook zeroing the
  head's slice of ``c_proj``'s input);
- Captum's LayerFeatureAblation on the MLP activation (heads: on ``c_proj``'s input), one feature per
  neuron or head, ``perturbations_per_eval`` 1;
- TransformerLens 4 ``run_with_hooks`` on a ``TransformerBridge`` over the same Hugging Face module
  (``blocks.i.mlp.hook_post`` / ``blocks.i.attn.hook_z``), HookedTransformer's successor;
- nnsight's ``NNsight(model).trace`` setting the neuron (head slice) to zero, one trace per unit.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lesion.bench._common import _bench, _Context, _median, _summary

NOTES = {
    "W5": "lesion: lesion.sweep on the module-prefix engine (the blocks before each neuron's block stubbed "
          "with their recorded outputs, many neurons per pass, the exact rank-1 update of c_proj), "
          "checked against the hook path first; peers: one full forward pass per neuron",
    "W6": "lesion: lesion.sweep on the module-prefix engine (everything before each head's c_proj stubbed, "
          "the rest of the model re-run for many heads per pass); peers: one full forward pass per head",
    "W7": "attribution estimate (one forward and one backward pass per batch) against the exact W5 sweep",
}  # fmt: skip


def gpt_model(sizes) -> torch.nn.Module:
    """The W5 model: HF GPT-2 architecture, seed-0 random weights, eval mode."""
    import transformers as tf

    config = tf.GPT2Config(
        n_layer=sizes.lm_layers, n_embd=sizes.lm_width, n_inner=sizes.lm_neurons, n_head=sizes.lm_heads,
        vocab_size=sizes.lm_vocab, n_positions=sizes.lm_tokens, bos_token_id=0, eos_token_id=0,
        use_cache=False,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = tf.GPT2LMHeadModel(config)
    return model.eval()


def _shared(ctx: _Context) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """The W5-W7 model and token batches, built once per bench run and kept on the context."""
    if "gpt" not in ctx.__dict__:
        ctx.__dict__["gpt"], ctx.__dict__["tokens"] = gpt_model(ctx.sizes), token_batches(ctx.sizes)
    return ctx.__dict__["gpt"], ctx.__dict__["tokens"]


def token_batches(sizes) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, sizes.lm_vocab, (sizes.lm_sequences, sizes.lm_tokens), generator=g)
    return list(ids.split(sizes.lm_batch))


# -------------------------------------------------------------------------------------------- scoring
def _score(logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, float, int]:
    """(correct, summed loss, count) of next-token prediction."""
    pred, target = logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()
    loss = float(F.cross_entropy(pred.float(), target, reduction="sum"))
    return float((pred.argmax(-1) == target).sum()), loss, len(target)


def _evaluate(run, batches) -> tuple[float, float]:
    correct = loss = n = 0.0
    with torch.no_grad():
        for ids in batches:
            c, s, k = _score(run(ids), ids)
            correct, loss, n = correct + c, loss + s, n + k
    return correct / n, loss / n


# -------------------------------------------------------------------------------------------- methods
def lesion_units(model, batches, units: Sequence[str], bar=None, info=None, keep=None) -> np.ndarray:
    """lesion's sweep of ``units``; ``keep`` (a dict) receives the last table under "table"."""
    from lesion.analyses.sweep import sweep
    from lesion.core.metric_lm import NextTokenLoss

    data = [{"input_ids": ids} for ids in batches]
    df = sweep(model, data, list(units), NextTokenLoss(), batch_size=len(batches[0]))
    if keep is not None:
        keep["table"] = df
    if bar is not None:
        bar.update(len(units))
    if info is not None:
        info.update(df.attrs["engine_fallbacks"])
        info["served"] = df.attrs["served"]
    return np.array([df.accuracy.to_numpy(), df.loss.to_numpy()])


def _parse(unit: str) -> tuple[int, str, int]:
    """(block, 'neuron' or 'head', index) of 'transformer.h.3.mlp.act:17' / 'transformer.h.3.attn:5'."""
    layer, _, idx = unit.rpartition(":")
    block = int(layer.split(".")[2])
    return block, "head" if layer.endswith(".attn") else "neuron", int(idx)


def hook_units(model, batches, units: Sequence[str], bar=None) -> np.ndarray:
    modules = dict(model.named_modules())
    hd = model.config.n_embd // model.config.n_head
    out = np.zeros((2, len(units)))
    for k, u in enumerate(units):
        block, kind, j = _parse(u)
        if kind == "neuron":

            def zero(_m, _i, o, j=j):
                o[..., j] = 0
                return o

            handle = modules[f"transformer.h.{block}.mlp.act"].register_forward_hook(zero)
        else:

            def zero_in(_m, inputs, j=j):
                x = inputs[0].clone()
                x[..., j * hd : (j + 1) * hd] = 0
                return (x,)

            handle = modules[f"transformer.h.{block}.attn.c_proj"].register_forward_pre_hook(zero_in)
        try:
            out[:, k] = _evaluate(lambda ids: model(ids).logits, batches)
        finally:
            handle.remove()
        if bar is not None:
            bar.update(1)
    return out


def transformer_lens_units(bridge, batches, units: Sequence[str], bar=None) -> np.ndarray:
    out = np.zeros((2, len(units)))
    for k, u in enumerate(units):
        block, kind, j = _parse(u)

        def zero(t, hook, j=j, kind=kind):
            t = t.clone()
            if kind == "neuron":
                t[..., j] = 0
            else:
                t[:, :, j] = 0  # hook_z: (batch, position, head, d_head)
            return t

        name = f"blocks.{block}.mlp.hook_post" if kind == "neuron" else f"blocks.{block}.attn.hook_z"
        hooks = [(name, zero)]
        out[:, k] = _evaluate(lambda ids, hooks=hooks: bridge.run_with_hooks(ids, fwd_hooks=hooks), batches)
        if bar is not None:
            bar.update(1)
    return out


def nnsight_units(model, batches, units: Sequence[str], bar=None) -> np.ndarray:
    from nnsight import NNsight

    wrapped = NNsight(model)
    hd = model.config.n_embd // model.config.n_head
    out = np.zeros((2, len(units)))
    for k, u in enumerate(units):
        block, kind, j = _parse(u)

        def run(ids, block=block, kind=kind, j=j):
            with wrapped.trace(ids):
                h = wrapped.transformer.h[block]
                if kind == "neuron":
                    h.mlp.act.output[..., j] = 0
                else:
                    h.attn.c_proj.input[..., j * hd : (j + 1) * hd] = 0
                logits = wrapped.output.logits.save()
            return logits

        out[:, k] = _evaluate(run, batches)
        if bar is not None:
            bar.update(1)
    return out


def captum_units(model, batches, units: Sequence[str], bar=None) -> np.ndarray:
    """LayerFeatureAblation per block, one feature per neuron (or head), the forward returning the
    batch's summed next-token loss, so a unit's attribution is the intact loss minus its ablated loss.
    Captum returns that one number per feature, not the accuracy: only the loss is compared."""
    from captum.attr import LayerFeatureAblation

    hd = model.config.n_embd // model.config.n_head

    def forward(x):
        logits = model(x).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten(), reduction="sum")[
            None
        ]

    by_layer: dict[tuple[int, str], list[tuple[int, int]]] = {}
    for k, u in enumerate(units):
        block, kind, j = _parse(u)
        by_layer.setdefault((block, kind), []).append((k, j))
    out = np.full((2, len(units)), np.nan)
    n = sum(ids[:, 1:].numel() for ids in batches)
    with torch.no_grad():
        intact = sum(float(forward(ids)) for ids in batches)
    for (block, kind), members in by_layer.items():
        h = model.transformer.h[block]
        layer, width = (
            (h.mlp.act, model.config.n_inner) if kind == "neuron" else (h.attn.c_proj, model.config.n_head)
        )
        # feature i < m: the i-th unit asked for; feature m: every other unit together (one extra pass)
        ids_of = torch.full((width,), len(members), dtype=torch.long)
        for i, (_, j) in enumerate(members):
            ids_of[j] = i
        mask = ids_of if kind == "neuron" else ids_of.repeat_interleave(hd)
        ablation = LayerFeatureAblation(forward, layer)
        drop = np.zeros(len(members))  # summed over batches: intact loss - ablated loss, per unit asked for
        for ids in batches:
            with torch.no_grad():
                attr = ablation.attribute(ids, layer_mask=mask.reshape(1, 1, -1), perturbations_per_eval=1,
                                          attribute_to_layer_input=kind == "head")  # fmt: skip
            per = attr.reshape(-1, attr.shape[-1])[0].double().numpy()  # one value per channel
            drop += np.array([per[j if kind == "neuron" else j * hd] for _, j in members])
        for i, (k, _) in enumerate(members):
            out[1, k] = (intact - drop[i]) / n
        if bar is not None:
            bar.update(len(members))
    return out


# -------------------------------------------------------------------------------------------- workloads
def _units(model, kind: str, count: int) -> list[str]:
    c = model.config
    if kind == "neuron":
        return [
            f"transformer.h.{b}.mlp.act:{j}" for b in range(c.n_layer) for j in range(min(count, c.n_inner))
        ]
    return [f"transformer.h.{b}.attn:{h}" for b in range(c.n_layer) for h in range(c.n_head)]


def _peers() -> dict[str, str | None]:
    """Which peers import here, and why not where one does not."""
    status: dict[str, str | None] = {}
    for name, mod in (("captum", "captum"), ("transformer_lens", "transformer_lens"), ("nnsight", "nnsight")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                __import__(mod)
            status[name] = None
        except Exception as exc:  # an ImportError, or a peer that fails to import beside the pinned torch
            status[name] = f"{type(exc).__name__}: {exc}"
    return status


def _bridge(model):
    """A TransformerBridge over a copy of ``model`` (building one rewires the module it wraps)."""
    import copy

    model = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

        return build_bridge_from_module(model, architecture="GPT2LMHeadModel", hf_config=model.config).eval()


def _workload(ctx: _Context, kind: str) -> dict:
    s = ctx.sizes
    model, batches = _shared(ctx)
    units = _units(model, kind, s.lm_units)
    check = list(range(min(len(units), 2 * s.lm_heads)))[:: max(1, len(units) // 8)][:4] or [0]
    n = sum(ids[:, 1:].numel() for ids in batches)
    info: dict = {}
    label = "W5" if kind == "neuron" else "W6"
    runs: dict = {}

    kept: dict = {}

    def mine(us, bar):
        return lesion_units(model, batches, us, bar, info, kept)

    runs["lesion"], ref, _ = _bench(ctx, f"{label} lesion", mine, units, check, ctx.repeats, n)
    if kind == "neuron" and len(kept["table"]) == len(units):  # W7 reuses this exact sweep
        ctx.__dict__["w5_exact"] = (kept["table"], _median(runs["lesion"]), list(units))
    peers, diffs = _peers(), {}
    methods = {"hook_loop": lambda us, bar: hook_units(model, batches, us, bar)}
    if peers["transformer_lens"] is None:
        bridge = _bridge(model)
        methods["transformer_lens"] = lambda us, bar: transformer_lens_units(bridge, batches, us, bar)
    if peers["nnsight"] is None:
        methods["nnsight"] = lambda us, bar: nnsight_units(model, batches, us, bar)
    stride = max(1, len(units) // s.lm_peer_units)  # peers cost one full pass per unit: time a subset
    subset, idx = units[::stride], list(range(0, len(units), stride))
    scale = {}
    for name, fn in methods.items():
        runs[name], _, diffs[name] = _bench(ctx, f"{label} {name}", fn, subset, [0], 1, n, ref[:, idx])
        scale[name] = len(units) / len(subset)
    if peers["captum"] is None:  # its output is the loss alone, so it is compared on the loss alone

        def captum(us, bar):
            return captum_units(model, batches, us, bar)

        runs["captum"], got, _ = _bench(ctx, f"{label} captum", captum, subset, [], 1, n)
        scale["captum"] = len(units) / len(subset)
        d = np.abs(got[1] - ref[1, idx]) / np.maximum(1.0, np.abs(ref[1, idx]))
        diffs["captum"] = {"loss": float(np.abs(got[1] - ref[1, idx]).max())}
        if d.max() > 1e-4:
            raise RuntimeError(f"{label} captum: loss differs from lesion's by up to {d.max():.3g}")
    flops = _flops(model, kind, units, n)
    out = _summary(ctx, runs, flops, scale)
    return {
        "description": f"delete each {'MLP neuron' if kind == 'neuron' else 'attention head'} of a 4-block "
                       "GPT-2-architecture model alone; next-token loss and accuracy",
        "n_tokens": n, "n_lesions": len(units), "peer_units_timed": len(subset), **out,
        "max_abs_diff": diffs, "peers": {k: v or "available" for k, v in peers.items()},
        "engine": info, "notes": NOTES[label],
    }  # fmt: skip


def _flops(model, kind: str, units: Sequence[str], n_tokens: int) -> dict[str, float]:
    """Multiply-adds x 2 per predicted token: a block's projections and attention, the unembedding."""
    c, t = model.config, model.config.n_positions
    block = 2 * (4 * c.n_embd**2 + 2 * c.n_embd * c.n_inner + 2 * t * c.n_embd)
    head = 2 * c.n_embd * c.vocab_size
    full = c.n_layer * block + head
    after = [
        (c.n_layer - 1 - _parse(u)[0]) * block + head + (block / 2 if kind == "head" else 0) for u in units
    ]
    return {"lesion": float(sum(after)) * n_tokens, "hook_loop": float(full * len(units)) * n_tokens}


def w5(ctx: _Context) -> dict:
    return _workload(ctx, "neuron")


def w6(ctx: _Context) -> dict:
    return _workload(ctx, "head")


def w7(ctx: _Context) -> dict:
    """The attribution estimate of every W5 neuron, beside the exact W5 sweep: time and agreement."""
    from scipy.stats import spearmanr

    from lesion.analyses.attribution import attribution_table
    from lesion.analyses.sweep import sweep
    from lesion.core.metric_lm import NextTokenLoss
    from lesion.core.sites import find_sites

    model, batches = _shared(ctx)
    data = [{"input_ids": ids} for ids in batches]
    units = _units(model, "neuron", ctx.sizes.lm_units)
    shared = ctx.__dict__.get("w5_exact")
    if shared is not None and shared[2] == units:  # W5 ran in this bench: its last table, its median time
        exact, t_exact, source = shared[0], shared[1], "W5's exact sweep in this run (median of its runs)"
    else:
        start = time.perf_counter()
        exact = sweep(model, data, units, NextTokenLoss(), batch_size=len(batches[0]))
        t_exact, source = time.perf_counter() - start, "an exact sweep timed once here (W5 did not run)"
    sites = [s for s in find_sites(model, data[0]) if s.name.endswith("mlp.act")]
    times = []
    for _ in range(ctx.repeats):
        start = time.perf_counter()
        est = attribution_table(model, data, metric=NextTokenLoss(), sites=sites, exact=False)
        times.append(time.perf_counter() - start)
    est = est.set_index("unit").loc[list(exact.lesion)]
    rho = float(spearmanr(est.estimate.to_numpy(), exact.delta_loss.to_numpy()).statistic)
    t_est = float(np.median(times))
    return {
        "description": "attribution estimate of every W5 neuron against lesion's exact sweep",
        "n_lesions": len(units), "seconds": {"estimate": t_est, "exact": t_exact},
        "ratios": {"exact/estimate": t_exact / t_est}, "spearman": rho, "exact_from": source,
        "notes": NOTES["W7"],
    }  # fmt: skip
