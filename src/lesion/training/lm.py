"""Next-token training of a language model (lesion's ``gpt``) on token sequences: seeded, deterministic
on CPU, one row per epoch with the columns of ``lesion.training.loop.train`` (accuracy = top-1 next token)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from lesion.errors import DataError
from lesion.training.loop import _check_args, _forked_rng, _optimizer, history_frame
from lesion.util.modules import eval_mode
from lesion.util.progress import progress_bar


def next_token_loss(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of every next token of ``ids`` (batch, t) and the number predicted right."""
    logits = model(ids)[:, :-1]  # (batch, t - 1, vocab): position i predicts token i + 1
    target = ids[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
    return loss, (logits.argmax(-1) == target).sum()


def evaluate_lm(model: nn.Module, ids: torch.Tensor, batch_size: int = 256) -> tuple[float, float]:
    """Mean next-token loss and top-1 accuracy over every predicted position of ``ids``."""
    total, correct, count = 0.0, 0, 0
    with torch.no_grad(), eval_mode(model):
        for lo in range(0, len(ids), batch_size):
            b = ids[lo : lo + batch_size]
            loss, right = next_token_loss(model, b)
            m = b[:, 1:].numel()
            total, correct, count = total + float(loss) * m, correct + int(right), count + m
    return total / count, correct / count


def train_lm(
    model: nn.Module,
    train_ids: torch.Tensor,
    test_ids: torch.Tensor,
    *,
    epochs: int = 5,
    lr: float = 3e-3,
    batch_size: int = 32,
    optimizer: str = "adam",
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Train ``model`` in place to predict each next token of ``train_ids`` (n, t); returns one row per
    epoch, epoch 0 being the untrained model: train/test loss and top-1 accuracy in eval mode."""
    _check_args(epochs, lr, batch_size, optimizer, 0.0, seed)
    for what, ids in (("train", train_ids), ("test", test_ids)):
        if ids.ndim != 2 or ids.shape[1] < 2 or len(ids) == 0 or ids.dtype.is_floating_point:
            raise DataError(
                f"{what} token ids of shape {tuple(ids.shape)}; expected integer (n >= 1, t >= 2)"
            )
    opt = _optimizer(model.parameters(), optimizer, lr, 0.0)
    generator = torch.Generator().manual_seed(seed)
    rows = [(0, *evaluate_lm(model, train_ids), *evaluate_lm(model, test_ids), lr, 0.0)]
    steps = -(-len(train_ids) // batch_size)
    with (
        _forked_rng(seed, torch.device("cpu")),
        progress_bar(None, "train", progress, total=epochs * steps) as bar,
    ):
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            model.train()
            order = torch.randperm(len(train_ids), generator=generator)
            for lo in range(0, len(order), batch_size):
                loss, _ = next_token_loss(model, train_ids[order[lo : lo + batch_size]])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update()
            model.eval()
            train_loss, train_acc = evaluate_lm(model, train_ids)
            test_loss, test_acc = evaluate_lm(model, test_ids)
            rows.append((epoch, train_loss, train_acc, test_loss, test_acc, lr, time.perf_counter() - start))
            bar.set_postfix(train_loss=f"{train_loss:.3f}", test_loss=f"{test_loss:.3f}")
    model.eval()
    return history_frame(rows)


def train_decoder(
    seqs: np.ndarray,
    vocab: int,
    arch: dict,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    **options,
) -> tuple[nn.Module, dict, pd.DataFrame]:
    """lesion's GPT-style decoder (``arch``: d_model, n_layer, n_head, dropout...) built with ``seed``
    and trained on token sequences ``seqs`` (n, t): the first 3/4 train, the rest test. The one path
    behind ``lesion train --arch gpt`` and the ``train`` jobs of ``lesion reproduce``. ``options`` go to
    ``train_lm`` (epochs, lr, batch_size, optimizer, progress). Returns (model, full arch, history)."""
    from lesion.models import build_model

    cut = max(1, len(seqs) * 3 // 4)
    arch = {**arch, "kind": "gpt", "vocab_size": int(vocab), "context": int(seqs.shape[1])}
    device = torch.device(device)
    net = build_model(arch, seed=seed).to(device)
    history = train_lm(
        net,
        torch.from_numpy(seqs[:cut]).to(device),
        torch.from_numpy(seqs[cut:]).to(device),
        seed=seed,
        **options,
    )
    return net, arch, history
