"""Sites: the layers of a model that have units, found by one dry forward pass.

A ``Site`` is the only place a unit axis is decided. By default every activation-function module is a
site (post-nonlinearity, as the paper ablates); any module can be named. The rule: outputs of
Linear-like layers (and of activations whose last parametrised predecessor is Linear-like) have their
units on the last axis, so a (batch, seq, hidden) activation has ``hidden`` units at every position;
conv-like outputs (batch, channels, ...) have them on axis 1, a unit being a whole feature map. A site
may carry a view: ``group`` consecutive channels form one unit (an attention head is
``group = head_dim`` channels of the input of the output projection, ``hook="input"``).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn

from lesion.core.batch import Batch, LesionNote, as_batch, check_tokens, token_limits
from lesion.core.units import unknown_layer
from lesion.errors import DataError, SiteError
from lesion.util.modules import eval_mode

ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid,
)  # fmt: skip
# activation classes of other libraries, by class name (Hugging Face transformers' activations.py)
ACTIVATION_NAMES = frozenset({
    "NewGELUActivation", "GELUActivation", "FastGELUActivation", "QuickGELUActivation",
    "GELUTanh", "PytorchGELUTanh", "ClippedGELUActivation", "SiLUActivation", "MishActivation",
    "ReLUSquaredActivation", "AccurateGELUActivation", "LaplaceActivation", "LinearActivation",
})  # fmt: skip
# True while find_sites runs its dry forward pass: lesion hooks step aside, so the pass sees the raw model
DRY_RUN: ContextVar[bool] = ContextVar("lesion_dry_run", default=False)
LAST_DIM = (nn.Linear, nn.Bilinear, nn.LayerNorm, nn.Embedding, nn.RMSNorm)
_CHANNEL_DIM = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm)


def _last_dim(m: nn.Module) -> bool:
    """Linear-like: units on the last axis (Hugging Face's GPT-2 ``Conv1D`` and RMSNorms included)."""
    name = type(m).__name__
    return isinstance(m, LAST_DIM) or name == "Conv1D" or name.endswith(("RMSNorm", "LayerNorm"))


def _parametrised(m: nn.Module) -> bool:
    return _last_dim(m) or isinstance(m, _CHANNEL_DIM)


@dataclass(frozen=True)
class Site:
    """A layer with units: its module name, unit axis, width and per-example output shape."""

    name: str
    module_type: str
    unit_dim: int  # axis of the units in the batched output, e.g. 1 for (batch, channels, h, w)
    width: int  # number of units (channels // group)
    shape: tuple[int, ...]  # output shape of one example (no batch dim)
    order: int  # position in execution order of the dry forward pass
    group: int = 1  # consecutive channels per unit (head_dim for an attention-head view)
    hook: str = "output"  # "output": the module's output; "input": its first input (a head view)
    module: str = ""  # the module hooked, where it differs from ``name`` (a head view: the projection)
    flat: int = 0  # trailing axes folded into the unit axis (a (batch, t, heads, head_dim) head view: 1)

    @property
    def target(self) -> str:
        """The name of the module whose output (or input) holds this site's units."""
        return self.module or self.name

    @property
    def heads(self) -> bool:
        """True for an attention-head view: each unit is one head's slice of the attention output."""
        return self.group > 1 and bool(self.module)

    def view(self, h: torch.Tensor) -> torch.Tensor:
        """The hooked tensor as this site sees it: trailing axes of a head view folded into the units."""
        return h.flatten(self.unit_dim, self.unit_dim + self.flat) if self.flat else h

    def unview(self, h: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Undo ``view``: ``h`` back in the hooked tensor's own shape ``like``."""
        return h.reshape(like.shape) if self.flat else h

    @property
    def spatial(self) -> bool:
        """True for conv-like sites, whose units are whole feature maps."""
        return len(self.shape) > 1 and self.unit_dim == 1

    @property
    def position_dim(self) -> int | None:
        """The sequence axis of a (batch, positions, ..., units) site, or None where there is none."""
        return 1 if len(self.shape) >= 2 and self.unit_dim == len(self.shape) else None

    def __str__(self) -> str:
        return f"{self.name} ({self.width})"


def hook_site(module: nn.Module, site: Site, edit: Callable[[torch.Tensor], torch.Tensor]):
    """Register ``edit`` on the tensor ``site`` reads from ``module`` (its output, or for an input view
    its first input) and return the handle: the one place the hook kind follows from a site."""
    if site.hook == "input":
        return module.register_forward_pre_hook(lambda _m, args: (edit(args[0]), *args[1:]))
    return module.register_forward_hook(lambda _m, _args, output: edit(output))


def is_activation(module: nn.Module) -> bool:
    return isinstance(module, ACTIVATIONS) or type(module).__name__ in ACTIVATION_NAMES


def find_sites(model: nn.Module, example, layers: Sequence[str] | str | None = None) -> list[Site]:
    """List the sites of ``model`` in execution order.

    ``layers=None`` takes every activation module (post-nonlinearity); ``"all"`` every module with a
    tensor output; a list of names exactly those modules. ``example`` is one batch of input (a tensor, an
    ``(inputs, targets)`` pair or a dict batch; one or two examples suffice); the model runs once on it
    in eval mode, without gradients. A module that runs more than once per forward pass is refused when
    named, and left out of the defaults with a ``LesionNote`` (an error when nothing else is left).
    """
    records = _dry_run(model, example)
    named = dict(model.named_modules())
    heads = head_views(model, records)
    aliases = hook_aliases(model)
    if layers is None and aliases:  # TransformerLens: every MLP's hook_post, and the heads
        posts = [a for a in aliases if a.endswith(".mlp.hook_post") and aliases[a] in records]
        sites = [_make_site(aliases[a], records[aliases[a]], named, records, a) for a in posts]
        if sites or heads:
            return sorted(sites + list(heads.values()), key=lambda s: s.order)
    if layers is None or layers == "all":
        names = [
            n for n, r in records.items()
            if n and r["tensor"] and r["ndim"] >= 2 and (layers == "all" or is_activation(named[n]))
        ]  # fmt: skip
        reused = [n for n in names if records[n]["calls"] != 1]
        names = [n for n in names if n not in reused]
        if reused and not names and not heads:
            raise _reused(reused[0], records[reused[0]]["calls"])
        if not names and not heads:
            raise _no_sites(records, named)
        if reused:  # e.g. torchvision's ResNet blocks call one ReLU twice: the rest stay usable
            warnings.warn(
                f"left out of the sites: {', '.join(repr(n) for n in reused[:5])} run more than once per "
                "forward pass (give each call its own module to lesion it)",
                LesionNote,
                stacklevel=2,
            )
        sites = [_make_site(n, records[n], named, records) for n in names] + list(heads.values())
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
        real = {n: aliases.get(n, n) for n in names if n not in heads}
        _check_requested(list(real.values()), records, named)
        sites = [
            heads[n] if n in heads else _make_site(real[n], records[real[n]], named, records, n)
            for n in names
        ]
    return sorted(sites, key=lambda s: s.order)


HEAD_COUNT = ("num_heads", "num_attention_heads", "n_head", "n_heads")
HEAD_DIM = ("head_dim", "attention_head_size", "head_size", "d_head")
PROJECTIONS = ("c_proj", "o_proj", "out_proj", "dense", "proj", "wo")  # attention output projections


def head_views(model: nn.Module, records: dict[str, dict]) -> dict[str, Site]:
    """The attention-head views of ``model``, by attention module name.

    An attention module is one that declares its head size (``head_dim``, ``attention_head_size``, ...)
    and has an output projection that ran once: a Linear-like child named ``c_proj`` (GPT-2),
    ``o_proj`` (Llama, ViT), ``out_proj``, ``proj``, ``wo``, or a sibling's ``dense`` (BERT's
    ``attention.output.dense``, the site then named by the parent). Its input, (batch, t, heads x
    head_dim), holds every query head's own slice (grouped-query attention shares keys and values, not
    these slices), so head h is channels ``h*head_dim .. (h+1)*head_dim - 1``. TransformerLens models are
    read at the HookPoint their ``hook_dict`` names ``blocks.i.attn.hook_z`` ((batch, t, heads, head_dim),
    or kept flat). ``nn.MultiheadAttention`` computes its
    projection inside one fused function, so it has no head view.
    """
    named = dict(model.named_modules())
    views: dict[str, Site] = {}
    for alias, z in hook_aliases(model).items():  # TransformerLens: z is (batch, t, heads, head_dim)
        r = records.get(z)
        if not (alias.endswith(".attn.hook_z") and r and r["calls"] == 1 and r["ndim"] in (3, 4)):
            continue
        name = alias.removesuffix(".hook_z")
        if r["ndim"] == 4:
            t, n, d = r["shape"][1:]
            views[name] = Site(name, "heads (hook_z)", 2, n, (t, n * d), r["order"], d, "output", z, 1)
        elif (n := _int_attr(model, HEAD_COUNT)) and r["shape"][-1] % n == 0:  # z kept flat: (b, t, n*d)
            t, c = r["shape"][1:]
            views[name] = Site(name, "heads (hook_z)", 2, n, (t, c), r["order"], c // n, "output", z)
    for name, m in named.items():
        hd = _int_attr(m, HEAD_DIM)
        if not name or hd is None or name in views:
            continue
        proj, owner = _projection(name, m, named, records)
        if proj is None:
            continue
        r = records[proj]
        shape = r["in_shape"]
        if shape is None or len(shape) < 3 or shape[-1] % hd:
            continue
        n = _int_attr(m, HEAD_COUNT) or _config_heads(m) or shape[-1] // hd
        if n * hd != shape[-1]:
            continue
        views.setdefault(owner, Site(
            owner, f"heads ({r['module']} input)", len(shape) - 1, n, tuple(shape[1:]), r["order"], hd,
            "input", proj,
        ))  # fmt: skip
    return views


def _int_attr(m: nn.Module, names: Sequence[str]) -> int | None:
    for a in names:
        v = getattr(m, a, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    cfg = getattr(m, "cfg", None)  # TransformerLens keeps them on its config
    for a in names:
        v = getattr(cfg, a, None) if cfg is not None else None
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def _config_heads(m: nn.Module) -> int | None:
    v = getattr(getattr(m, "config", None), "num_attention_heads", None)
    return v if isinstance(v, int) and v > 0 else None


def _projection(name: str, m: nn.Module, named, records) -> tuple[str | None, str]:
    """(the output projection's module name, the name of the head site) of attention module ``name``."""

    def ran_once(n: str) -> bool:
        return n in records and records[n]["calls"] == 1 and _last_dim(named[n])

    for p in PROJECTIONS:
        if ran_once(f"{name}.{p}"):
            return f"{name}.{p}", name
    parent = name.rpartition(".")[0]
    for sibling, _ in named[parent].named_children() if parent in named else []:
        n = f"{parent}.{sibling}.dense"
        if f"{parent}.{sibling}" != name and ran_once(n):
            return n, parent
    return None, name


def default_candidates(sites: Sequence[Site]) -> list[Site]:
    """The paper's candidate units: all sites of an MLP; the last three conv sites of a convnet."""
    spatial = [s for s in sites if s.spatial]
    return spatial[-3:] if spatial else list(sites)


def _dry_run(model: nn.Module, example) -> dict[str, dict]:
    batch = example if isinstance(example, Batch) else as_batch(example)
    if len(batch) == 0:
        raise DataError("example input must hold at least one example")
    check_tokens(batch, token_limits(model))  # before a GPT-2 fails with "index out of range"
    records: dict[str, dict] = {}
    counter = [0]
    handles = []

    me = threading.get_ident()  # other threads may run the same model meanwhile: only this pass counts

    def make_hook(name):
        def hook(module, inputs, output):
            if threading.get_ident() != me:
                return
            r = records.setdefault(name, {"calls": 0, "order": counter[0]})
            r["calls"] += 1
            r["tensor"] = isinstance(output, torch.Tensor)
            r["type"] = type(output).__name__
            r["shape"] = tuple(output.shape) if r["tensor"] else ()
            r["ndim"] = output.ndim if r["tensor"] else 0
            r["module"] = type(module).__name__
            first = inputs[0] if inputs else None
            r["in_shape"] = tuple(first.shape) if isinstance(first, torch.Tensor) else None
            counter[0] += 1

        return hook

    for name, module in model.named_modules():
        handles.append(module.register_forward_hook(make_hook(name)))
    token = DRY_RUN.set(True)
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad(), eval_mode(model):
            batch.to(device).run(model)
    except Exception as exc:
        if isinstance(exc, SiteError | DataError):
            raise
        raise DataError(f"the model failed on an example batch of shape {batch.shapes()}: {exc}") from exc
    finally:
        DRY_RUN.reset(token)
        for h in handles:
            h.remove()
    return records


def _reused(name: str, calls: int) -> SiteError:
    return SiteError(
        f"module {name!r} runs {calls} times per forward pass, so its units are ambiguous; expected a module "
        "used once: give each call its own module (e.g. one nn.ReLU() per use), or name other sites with "
        "layers=[...]"
    )


def _no_sites(records, named) -> SiteError:
    usable = [f"{n} ({r['module']}, {r['shape'][1:]})" for n, r in records.items()
              if n and r["tensor"] and r["ndim"] >= 2 and r["calls"] == 1]  # fmt: skip
    listed = ", ".join(usable[:20]) + (", ..." if len(usable) > 20 else "")
    return SiteError(
        "the model has no activation modules to use as sites (activations written as functions such as "
        "F.relu are not modules); pass layers=[...] naming modules to lesion, or layers='all'. "
        f"Modules with a tensor output: {listed or 'none'}"
    )


def _check_requested(names, records, named) -> None:
    usable = [n for n, r in records.items() if n and r["tensor"] and r["calls"] == 1 and r["ndim"] >= 2]
    for n in names:
        if n not in named or not n:
            widths = {u: _make_site(u, records[u], named, records).width for u in usable}
            raise unknown_layer(n, widths)
        r = records.get(n)
        if r is None:
            raise SiteError(f"layer {n!r} exists but did not run in the forward pass; expected a used module")
        if not r["tensor"]:
            raise SiteError(
                f"site {n!r} outputs a {r['type']}, not a tensor; expected a module whose output is one "
                "tensor (name a submodule instead)"
            )
        if r["calls"] != 1:
            raise _reused(n, r["calls"])
        if r["ndim"] < 2:
            raise SiteError(f"site {n!r} outputs shape {r['shape']}; expected (batch, units, ...)")


def _make_site(name: str, rec: dict, named: dict[str, nn.Module], records: dict, alias: str = "") -> Site:
    dim = _unit_dim(named[name], rec, named, records)
    shape = rec["shape"]
    if alias and alias != name:  # a TransformerLens hook name: the site is named by it
        return Site(alias, rec["module"], dim, shape[dim], tuple(shape[1:]), rec["order"], module=name)
    return Site(name, rec["module"], dim, shape[dim], tuple(shape[1:]), rec["order"])


def hook_aliases(model: nn.Module) -> dict[str, str]:
    """TransformerLens hook names (``blocks.0.mlp.hook_post``) -> the module names of their HookPoints."""
    hook_dict = getattr(model, "hook_dict", None)
    if not isinstance(hook_dict, dict):
        return {}
    ids = {id(m): n for n, m in model.named_modules()}
    return {k: ids[id(m)] for k, m in hook_dict.items() if isinstance(k, str) and id(m) in ids}


def _unit_dim(module: nn.Module, rec: dict, named, records) -> int:
    ndim = rec["ndim"]
    if ndim == 2:
        return 1
    kind = module
    if not _parametrised(module):
        # an activation inherits the layout of the last parametrised layer that ran before it
        before = [
            (r["order"], n) for n, r in records.items()
            if r["order"] < rec["order"] and n and _parametrised(named[n])
        ]  # fmt: skip
        kind = named[max(before)[1]] if before else module
    return ndim - 1 if _last_dim(kind) else 1
