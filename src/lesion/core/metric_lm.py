"""Metrics of language models and of any output distribution: next-token loss (causal language
modelling), KL divergence to the intact model, and the logit difference between two answers (the
standard activation-patching metric). The protocol they follow is ``lesion.core.metric.Metric``."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lesion.core.batch import Batch
from lesion.core.metric import Metric, MetricError
from lesion.errors import DataError


def _positions(outputs: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (k, batch, seq - 1, V) at predicting positions (a view), their target tokens and the
    valid mask (batch, seq - 1)."""
    if "labels" in batch.fields:
        tokens, ignore = batch.fields["labels"], batch.fields["labels"] == -100
    else:
        tokens = batch.kwargs.get("input_ids", batch.args[0] if batch.args else None)
        if tokens is None:
            raise DataError("next-token loss needs input_ids (or labels) in the batch")
        ignore = torch.zeros_like(tokens, dtype=torch.bool)
    if outputs.ndim != 4 or outputs.shape[1:3] != tokens.shape:
        raise MetricError(
            f"next-token loss expects logits (batch, seq, vocab) for tokens {tuple(tokens.shape)}; "
            f"got {tuple(outputs.shape[1:])}"
        )
    valid = ~ignore[:, 1:]
    if "attention_mask" in batch.fields:
        mask = batch.fields["attention_mask"].bool()
        valid = valid & mask[:, 1:] & mask[:, :-1]
    return outputs[:, :, :-1], tokens[:, 1:], valid


def _next_token(outputs: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (k, m, V) at predicting positions, their target tokens (m,) and the valid mask (m,)."""
    logits, target, valid = _positions(outputs, batch)
    return logits.reshape(outputs.shape[0], -1, outputs.shape[-1]), target.reshape(-1), valid.reshape(-1)


class NextTokenLoss(Metric):
    """Causal language modelling: mean cross-entropy ``loss`` of each next token and top-1 ``accuracy``,
    over valid positions (``attention_mask`` honoured; ``labels`` of -100 ignored, as in Hugging Face)."""

    main, curve, discrete, unscored_last = "loss", "loss", ("accuracy",), True

    def update(self, outputs, batch, lesions, intact=None):
        # On the logits in place (no copy of the valid positions): the cross-entropy of each position is
        # logsumexp - the target's logit, and ``max`` gives argmax's index (the first of equal maxima).
        logits, target, valid = _positions(outputs, batch)
        x = logits if logits.dtype == torch.float32 else logits.float()
        k, t = x.shape[0], target.long().clamp(min=0)  # -100 labels: any index; masked below
        picked = x.gather(-1, t.expand(k, *t.shape).unsqueeze(-1)).squeeze(-1)
        ce = torch.where(valid, (torch.logsumexp(x, -1) - picked).double(), 0.0)
        hit = (x.max(-1).indices == t) & valid
        self._add("loss", lesions, ce.sum((1, 2)).cpu().numpy())
        self._add("correct", lesions, hit.sum((1, 2)).cpu().numpy().astype(np.float64))
        self._add("count", lesions, np.full(k, int(valid.sum()), dtype=np.float64))

    def compute(self):
        n = self.sums["count"]
        return {"loss": self.sums["loss"] / n, "accuracy": self.sums["correct"] / n}

    def loss(self, output, batch):
        logits, target, valid = _next_token(output[None], batch)
        ce = F.cross_entropy(logits[0, valid].float(), target[valid].long(), reduction="sum")
        return ce, float(valid.sum())

    def losses(self, outputs, batch):  # every copy in one cross-entropy call
        logits, target, valid = _next_token(outputs, batch)
        k = outputs.shape[0]
        ce = F.cross_entropy(
            logits[:, valid].flatten(0, 1).float(), target[valid].repeat(k), reduction="none"
        )
        return ce.reshape(k, -1).mean(1)


class KL(Metric):
    """Mean KL divergence KL(intact || lesioned) of the output distributions (softmax over the last
    axis), per example and position; with an attention mask only real positions count."""

    main, needs_intact = "kl", True

    def loss(self, output, batch):
        raise MetricError(
            "KL to the intact model has zero gradient at the intact model, so its attribution estimate is 0 "
            "for every unit; expected a metric with a gradient: NextTokenLoss, LogitDiff, Classification, "
            "MSE or Scalar"
        )

    def update(self, outputs, batch, lesions, intact=None):
        if intact is None:
            raise MetricError("KL needs the intact model's outputs")
        k = outputs.shape[0]
        logp = F.log_softmax(outputs.float(), -1)
        logq = F.log_softmax(intact.float(), -1)[None]
        kl = (logq.exp() * (logq - logp)).sum(-1)  # (k, batch, ...)
        mask = batch.fields.get("attention_mask")
        if mask is not None and kl.ndim == 3 and mask.shape == kl.shape[1:]:
            kl = kl * mask[None].to(kl.dtype)
            count = float(mask.sum())
        else:
            count = kl[0].numel()
        self._add("kl", lesions, kl.reshape(k, -1).double().sum(1).cpu().numpy())
        self._add("count", lesions, np.full(k, count))

    def compute(self):
        return {"kl": self.sums["kl"] / self.sums["count"]}


class LogitDiff(Metric):
    """Mean logit difference ``logit[a] - logit[b]`` at the last position (the last real token when
    the batch has an attention mask). ``a``/``b`` are token ids or names of per-example batch fields."""

    main, higher_is_better = "logit_diff", True

    def __init__(self, a: int | str, b: int | str):
        self.a, self.b = a, b

    def loss(self, output, batch):
        last = self._last(output[None], batch).float()  # (1, batch, vocab)
        diff = self._pick(last, self.a, batch) - self._pick(last, self.b, batch)
        return diff.sum(), float(diff.shape[1])

    @staticmethod
    def _last(outputs: torch.Tensor, batch: Batch | None = None) -> torch.Tensor:
        """(k, batch, vocab): each example's last real position of (k, batch, seq, vocab) logits."""
        if outputs.ndim != 4:
            return outputs
        mask = batch.fields.get("attention_mask") if batch is not None else None
        pos = (mask.sum(1) - 1).long() if mask is not None else torch.full((outputs.shape[1],), -1)
        return outputs[:, torch.arange(outputs.shape[1]), pos % outputs.shape[2]]

    def update(self, outputs, batch, lesions, intact=None):
        last = self._last(outputs, batch)
        if last.ndim != 3:
            raise MetricError(
                f"LogitDiff expects logits (batch, [seq,] vocab); got {tuple(outputs.shape[1:])}"
            )
        diff = self._pick(last, self.a, batch) - self._pick(last, self.b, batch)  # (k, batch)
        self._add("logit_diff", lesions, diff.double().sum(1).cpu().numpy())
        self._add("count", lesions, np.full(diff.shape[0], diff.shape[1], dtype=np.float64))

    @staticmethod
    def _pick(last, token, batch) -> torch.Tensor:
        if isinstance(token, str):
            ids = batch.field(token).long().reshape(-1)
            return last.gather(2, ids[None, :, None].expand(last.shape[0], -1, 1))[..., 0]
        if not 0 <= int(token) < last.shape[-1]:
            raise MetricError(f"token {token} is outside the vocabulary of {last.shape[-1]}")
        return last[..., int(token)]

    def compute(self):
        return {"logit_diff": self.sums["logit_diff"] / self.sums["count"]}
