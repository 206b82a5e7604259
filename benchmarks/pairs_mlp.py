"""Rough timing of every pair (or the pairs of the first N units) of the first 512-wide layer of a
784-512-512-10 MLP, trained 2 epochs on Fashion-MNIST, on its 10,000 test images.

Usage: python benchmarks/pairs_mlp.py [N]   (N < 512: only the pairs whose first unit is below N)
"""

import sys
import time

import torch

from lesion.analyses.pairs import pair_effects
from lesion.data._builtin import load_dataset


def main(n: int) -> None:
    torch.set_num_threads(2)
    d = load_dataset("fashion-mnist")
    x, y = d.x_train.reshape(len(d.x_train), -1), d.y_train
    torch.manual_seed(0)
    layers = [torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers, torch.nn.Linear(512, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(2):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 256):
            idx = perm[i : i + 256]
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    xt, yt = d.x_test.reshape(len(d.x_test), -1)[:10000], d.y_test[:10000]
    pairs = [(f"1:{i}", f"1:{j}") for i in range(n) for j in range(i + 1, 512)] if n < 512 else None
    start, cpu = time.time(), time.process_time()
    df = pair_effects(net, (xt, yt), pairs=pairs, layer="1")
    wall, cpu = time.time() - start, time.process_time() - cpu
    print(
        f"{len(df)} pairs x 10,000 examples: {wall:.1f} s wall, {cpu:.1f} s CPU, {len(df) / wall:.0f} pairs/s"
    )
    print("fallbacks", df.attrs["engine_fallbacks"], "checked", df.attrs["checked"])
    print(df[["delta_loss", "interaction_loss"]].describe())


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 512)
