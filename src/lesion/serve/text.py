"""The explorer on a language model: blocks of attention heads and MLP neurons, text shown per token.

``TextExplorer(model, tokens, tokenizer=...)`` evaluates the model's next-token loss on ``tokens``
(n sequences of equal length) intact and then under any set of deleted heads and neurons, applied with
``lesion.ablate`` (zero replacement, or each unit's mean over the same text). It reports the total
(``lesion.metrics.NextTokenLoss`` on the very same outputs) and the loss of every predicted token, so
the page can colour each token by how much the deletion hurt it. The model is never changed.
"""

from __future__ import annotations

import inspect
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lesion.analyses.sweep import sweep
from lesion.core.batch import as_batch, output_tensor
from lesion.core.lesions import Lesion, ablate
from lesion.core.metric_lm import LogitDiff, NextTokenLoss
from lesion.core.replacements import Mean
from lesion.core.sites import Site, find_sites
from lesion.core.units import UnitSet, parse_units
from lesion.errors import DataError, LesionError, UnitError
from lesion.util.modules import eval_mode, model_device

REPLACEMENTS = ("zero", "mean")
MAX_SHOWN = 4096  # tokens the page shows at most (the total is measured on every token)


@dataclass(frozen=True)
class Block:
    """One transformer block as the page draws it: its head view and its MLP neurons (either may be None)."""

    name: str  # e.g. "transformer.h.0"
    heads: Site | None
    mlp: Site | None


@dataclass(frozen=True)
class TextResult:
    """Next-token loss and accuracy over every scored token, per-token losses, and the answer's logit
    difference when the explorer has an answer pair."""

    loss: float
    accuracy: float
    n_tokens: int
    token_loss: np.ndarray  # (n, seq - 1): loss of predicting token t + 1 from the prefix up to t
    logit_diff: float | None = None


def blocks_of(sites: Sequence[Site]) -> list[Block]:
    """Group sites by block: the module path up to its first numeric part (``transformer.h.3``).

    Within a block the head view is the site with ``heads``; the MLP is the first other site. Sites with
    no numeric part, or a block's extra sites, become blocks of their own, in model order.

    >>> from lesion.core.sites import Site
    >>> s = [Site("t.h.0.attn", "Attention", 2, 4, (5, 32), 0, group=8, module="t.h.0.attn.c_proj"),
    ...      Site("t.h.0.mlp.act", "GELU", 2, 64, (5, 64), 1),
    ...      Site("t.h.1.mlp.act", "GELU", 2, 64, (5, 64), 2)]
    >>> [(b.name, b.heads and b.heads.name, b.mlp and b.mlp.name) for b in blocks_of(s)]
    [('t.h.0', 't.h.0.attn', 't.h.0.mlp.act'), ('t.h.1', None, 't.h.1.mlp.act')]
    """
    groups: OrderedDict[str, dict[str, Site]] = OrderedDict()
    for s in sorted(sites, key=lambda s: s.order):
        m = re.match(r"^(.*?\.\d+)(\.|$)", s.name)
        key = m.group(1) if m else s.name
        slot = "heads" if s.heads else "mlp"
        if slot in groups.get(key, {}):
            key = s.name  # a second MLP-like site in the block: its own column
        groups.setdefault(key, {})[slot] = s
    return [Block(k, g.get("heads"), g.get("mlp")) for k, g in groups.items()]


def token_losses(model: nn.Module, tokens: torch.Tensor, *, batch_size: int = 64) -> tuple[dict, np.ndarray]:
    """``NextTokenLoss`` values ({"loss", "accuracy"}) of ``model`` on ``tokens`` (n, seq) and the loss of
    every predicted token (n, seq - 1), both from the same forward passes: the mean of the second is the
    first's loss. Lesions applied around the call (``lesion.ablate``) apply to both.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Embedding(5, 5))
    >>> total, per = token_losses(net, torch.tensor([[0, 1, 2]]))
    >>> per.shape, bool(abs(per.mean() - total["loss"]) < 1e-6)
    ((1, 2), True)
    """
    metric = NextTokenLoss()
    metric.reset(1)
    per = []
    device = model_device(model)
    with torch.no_grad(), eval_mode(model):
        for i in range(0, len(tokens), batch_size):
            ids = tokens[i : i + batch_size].to(device)
            batch = as_batch(model_input(model, ids), start=i)
            logits = output_tensor(batch.run(model))  # (b, seq, vocab)
            metric.update(logits[None], batch, slice(0, 1))
            ce = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
            per.append(ce.reshape(len(ids), -1).double().cpu())  # (b, seq - 1)
    values = {k: float(v[0]) for k, v in metric.compute().items()}
    return values, torch.cat(per).numpy()


class TextExplorer:
    """A language model and evaluation text, ready to evaluate any set of deleted heads and neurons.

    ``tokens``: token ids (n, seq) or (seq,); ``tokenizer`` (optional, Hugging Face style, with
    ``convert_ids_to_tokens`` or ``decode``) turns them into the strings the page shows. ``answer``:
    an optional pair of token ids (a, b); the page then also shows ``logit[a] - logit[b]`` at the last
    position (``lesion.metrics.LogitDiff``).
    """

    def __init__(
        self,
        model: nn.Module,
        tokens: torch.Tensor,
        *,
        tokenizer=None,
        sites: Sequence[Site] | None = None,
        answer: tuple[int, int] | None = None,
        name: str = "model",
        dataset: str = "text",
        batch_size: int = 64,
        cache_size: int = 256,
    ):
        self.model, self.name, self.dataset, self.batch_size = model, name, dataset, batch_size
        self.tokens = check_tokens(model, tokens)
        self.answer = None if answer is None else (int(answer[0]), int(answer[1]))
        self.sites = (
            list(sites) if sites is not None else find_sites(model, model_input(model, self.tokens[:2]))
        )
        if not self.sites:
            raise DataError("the model has no sites (attention heads or MLP activations) to lesion")
        self.blocks = blocks_of(self.sites)
        self.strings = token_strings(self.tokens, tokenizer)
        self._lock = threading.Lock()  # one lesion's hooks on the shared model at a time
        self._atlas = None  # every unit's card (lesion.roles), measured at the first card request
        self._cache: OrderedDict[tuple, TextResult] = OrderedDict()
        self._cache_size = cache_size
        self._mean: Mean | None = None
        self._importance: dict[str, np.ndarray] | None = None
        self.intact = self._measure(None)

    @property
    def units(self) -> int:
        return sum(s.width for s in self.sites)

    def selection(self, units: Sequence[str]) -> UnitSet:
        """Parse and check unit addresses (``transformer.h.0.attn:3``, ``...mlp.act:17``) on the sites."""
        return parse_units([str(u) for u in units], self.sites).resolve(self.sites)

    def evaluate(self, units: Sequence[str], replacement: str = "zero") -> tuple[UnitSet, TextResult]:
        """The validated lesion and the model's loss (total and per token) with ``units`` deleted."""
        if replacement not in REPLACEMENTS:
            raise LesionError(
                f"unknown replacement {replacement!r}; expected one of {', '.join(REPLACEMENTS)}"
            )
        selection = self.selection(units)
        key = (tuple(selection.to_strings()), replacement)
        if not key[0]:
            return selection, self.intact
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return selection, self._cache[key]
            result = self._measure(Lesion(selection, self._replacement(replacement)))
            self._cache[key] = result
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return selection, result

    def importance(self, *, progress: bool = False) -> dict[str, np.ndarray]:
        """Per site, the change in loss when each unit alone is deleted (zero replacement), measured
        with ``lesion.sweep`` + ``NextTokenLoss`` the first time it is asked for (one pass per unit)."""
        with self._lock:  # the sweep's hooks borrow the shared model: no evaluation meanwhile
            if self._importance is None:
                units = [f"{s.name}:{i}" for s in self.sites for i in range(s.width)]
                data = model_input(self.model, self.tokens)
                df = sweep(self.model, data, units, NextTokenLoss(), sites=self.sites,
                           batch_size=self.batch_size, progress=progress)  # fmt: skip
                delta, out = df["delta_loss"].to_numpy(), {}
                for s, end in zip(self.sites, np.cumsum([s.width for s in self.sites]), strict=True):
                    out[s.name] = delta[end - s.width : end]  # (width,)
                self._importance = out
            return self._importance

    def card(self, address: str) -> dict:
        """One unit's card, as ``atlas.html`` shows it (``lesion.roles``): every card is measured on the
        text at the first request, under the lesion lock, and kept."""
        from lesion.roles.assemble import build
        from lesion.roles.atlas import one_card, page_data, token_texts

        chosen = self.selection([address]).units()
        if len(chosen) != 1:
            raise UnitError(f"expected one unit like 'layer:17', got {address!r}")
        data = model_input(self.model, self.tokens)
        with self._lock:
            if self._atlas is None:
                self._atlas = build(self.model, data, sites=self.sites, batch_size=self.batch_size)
        one = one_card(self._atlas, str(chosen[0]))
        names = {int(t): w for row, ws in zip(self.tokens.tolist(), self.strings, strict=False)
                 for t, w in zip(row, ws, strict=False)}  # fmt: skip
        texts = token_texts(data, one, decode=lambda ids: [names.get(int(t), f"t{t}") for t in ids])
        doc = page_data(one, {}, title=self.name, texts=texts)
        return {"card": doc["cards"][0], "meta": doc["meta"], "images": {}, "texts": doc["texts"]}

    def _replacement(self, kind: str):
        if kind == "zero":
            return 0.0
        if self._mean is None:  # every site's means, measured once on the evaluation text
            sites = {s.name: s for s in self.sites}
            self._mean = Mean().fit(self.model, model_input(self.model, self.tokens), sites, [])
        return self._mean

    def _measure(self, lesion: Lesion | None) -> TextResult:
        ctx = nullcontext() if lesion is None else ablate(self.model, lesion, sites=self.sites)
        with ctx:
            values, per = token_losses(self.model, self.tokens, batch_size=self.batch_size)
            diff = self._logit_diff() if self.answer is not None else None
        return TextResult(values["loss"], values["accuracy"], per.size, per, diff)

    def _logit_diff(self) -> float:
        metric = LogitDiff(*self.answer)
        metric.reset(1)
        with torch.no_grad(), eval_mode(self.model):
            for i in range(0, len(self.tokens), self.batch_size):
                batch = as_batch(model_input(self.model, self.tokens[i : i + self.batch_size]), start=i)
                metric.update(output_tensor(batch.run(self.model))[None], batch, slice(0, 1))
        return float(metric.compute()["logit_diff"][0])

    def shown(self) -> int:
        """How many sequences the page shows (all, unless they hold more than ``MAX_SHOWN`` tokens)."""
        return max(1, min(len(self.tokens), MAX_SHOWN // self.tokens.shape[1]))


def model_input(model: nn.Module, ids: torch.Tensor):
    """How the model takes token ids: ``{"input_ids": ids}`` where its forward names that argument (Hugging
    Face), else the tensor itself (a plain-torch model's first positional input)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return ids
    return {"input_ids": ids} if "input_ids" in params else ids


def check_tokens(model: nn.Module, tokens) -> torch.Tensor:
    """Token ids as a (n, seq) long tensor, checked against the model's vocabulary and context length."""
    t = torch.as_tensor(tokens)
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or t.shape[1] < 2 or len(t) == 0 or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise DataError(
            f"tokens of shape {tuple(t.shape)} and dtype {t.dtype}; expected integer token ids (n, seq) "
            "with n >= 1 and seq >= 2"
        )
    t = t.long()
    vocab = _vocab_size(model)
    if int(t.min()) < 0 or (vocab is not None and int(t.max()) >= vocab):
        bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
        expected = "ids >= 0" if vocab is None else f"ids 0..{vocab - 1}"
        raise DataError(f"token id {bad} is outside the model's vocabulary of {vocab}; expected {expected}")
    context = _context_length(model)
    if context is not None and t.shape[1] > context:
        raise DataError(
            f"the text has {t.shape[1]} tokens per sequence, longer than the model's context of {context}; "
            f"expected at most {context}"
        )
    return t


def _vocab_size(model: nn.Module) -> int | None:
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if emb is None:
        emb = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    return getattr(emb, "num_embeddings", None)


def _context_length(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def token_strings(tokens: torch.Tensor, tokenizer=None) -> list[list[str]]:
    """What the page prints for each token: the tokenizer's token string, else the id."""
    rows = tokens.tolist()
    if tokenizer is None:
        return [[str(t) for t in row] for row in rows]
    convert = getattr(tokenizer, "convert_ids_to_tokens", None)
    if callable(convert):
        return [[str(s) for s in convert(row)] for row in rows]
    decode = getattr(tokenizer, "decode", None)
    if callable(decode):
        return [[str(decode([t])) for t in row] for row in rows]
    raise DataError(
        f"tokenizer is a {type(tokenizer).__name__}; expected one with convert_ids_to_tokens or decode"
    )


def explorer_for_text(
    model: nn.Module,
    tokens,
    tokenizer=None,
    *,
    answer: tuple[int, int] | None = None,
    layers: Sequence[str] | None = None,
    name: str = "model",
    dataset: str = "text",
) -> TextExplorer:
    """The explorer's state for a language model (``nn.Module`` returning logits (batch, seq, vocab) or an
    HF output with ``logits``) on the token ids ``tokens``; serve it with ``create_app``.

    ``layers`` limits the sites (default: every attention head view and MLP activation).
    """
    t = check_tokens(model, tokens)
    sites = find_sites(model, model_input(model, t[:2]), list(layers) if layers else None)
    return TextExplorer(model, t, tokenizer=tokenizer, sites=sites, answer=answer, name=name, dataset=dataset)


def explorer_for_file(
    path: Path,
    *,
    text: Path | None = None,
    tokens: Path | None = None,
    sequences: int = 16,
    layers: Sequence[str] | None = None,
    say=print,
) -> TextExplorer | None:
    """The text explorer for a language model on disk (``lesion serve``), or None for a model that is not
    one (the classifier explorer serves it).

    Language models on disk (lesion's ``gpt`` arch, Hugging Face directories) are recognised and read by
    ``lesion.pipeline.lm`` and ``study.open_any``, the loaders ``lesion analyze`` uses.
    """
    from lesion.pipeline import classifier as study
    from lesion.pipeline.lm import TextConfig, facts, is_language_model, lm_data

    net, info = study.open_any(path)
    if not is_language_model(info):
        if text is not None or tokens is not None:
            raise LesionError(f"--text/--tokens are for language models; {path.name} is a classifier")
        return None
    config = TextConfig(text=str(text) if text else None, tokens=str(tokens) if tokens else None,
                        sequences=sequences)  # fmt: skip
    data, name = lm_data(net, info, config)
    ids = data["input_ids"]
    say(f"measuring {path.name} on {len(ids)} sequences x {ids.shape[1]} tokens of {name}")
    tokenizer = facts(net, info)["tokenizer"]
    return explorer_for_text(net, ids, tokenizer, layers=layers, name=path.name, dataset=name)
