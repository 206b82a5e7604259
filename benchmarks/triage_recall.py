"""Triage recall on a small trained GPT-2 (2 blocks, d 64, 4 heads, 256 neurons: 520 units) trained 400
steps on the repeated-three-tokens task: the full exact sweep is the truth; a 10% budget over 10 seeds.

Usage: python benchmarks/triage_recall.py   (from the repository root; ~15 min on a busy 2-core machine)
"""

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers

import lesion
from lesion.analyses.attribution import spearman

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from text_support import pattern


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_inner=256, vocab_size=24, n_positions=16,
                                  resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)  # fmt: skip
    m = transformers.GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    start = time.time()
    for step in range(400):
        x = pattern(32, seed=2000 + step)
        loss = m(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    print("trained", round(time.time() - start), "s, loss", float(loss.detach()))
    data, metric = {"input_ids": pattern(64, seed=9)}, lesion.metrics.NextTokenLoss()
    units = [f"{s.name}:{j}" for s in lesion.find_sites(m, data) for j in range(s.width)]
    full = lesion.sweep(m, data, units, metric)
    k = math.ceil(0.01 * len(units))
    best = set(np.argsort(-full.delta_loss.abs().to_numpy())[:k].tolist())
    est = lesion.attribution_table(m, data, metric=metric, exact=False)
    print("units", len(units), "k", k, "spearman", spearman(est.estimate, full.delta_loss))
    rows = []
    for seed in range(10):
        df = lesion.sweep(m, data, metric=metric, triage="10%", seed=seed)
        exact = set(np.flatnonzero(df.source.to_numpy() == "exact").tolist())
        t = df.attrs["triage"]
        rows.append((len(best & exact) / k, t["low"], t["recall"], t["high"]))
    covered = sum(lo - 1e-9 <= truth <= hi + 1e-9 for truth, lo, _, hi in rows)
    print(f"mean true recall {np.mean([r[0] for r in rows]):.3f}, interval covers the truth {covered}/10")
    print("(true, low, point, high) per seed:", [tuple(round(v, 2) for v in r) for r in rows])


if __name__ == "__main__":
    main()
