"""Timing of every pair (or the pairs of the first N units) of one 512-wide layer of a 784-512-512-10
MLP, trained 2 epochs on Fashion-MNIST, on its 10,000 test images, with ``lesion.analyses.pairs``.

Usage: python benchmarks/pairs_mlp.py [N] [--layer first|last] [--threads T] [--json FILE]
  N < 512: only the pairs whose first unit is below N (every pair: 130,816 pair lesions).
  --layer first: the first hidden layer (a ReLU and the 10-way output follow: the hinge path);
  --layer last: the last hidden layer (read by the output layer itself: the logits in closed form).
Prints wall and CPU seconds (time.process_time: the machine is shared, so CPU seconds say more than
wall time under load), pairs per second and the load average before and after.
"""

import argparse
import json
import os
import time

import torch

from lesion.analyses.pairs import pair_effects
from lesion.data._builtin import load_dataset
from lesion.util.alloc import tune_allocator


def trained(d) -> torch.nn.Sequential:
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
    return net.eval()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("n", nargs="?", type=int, default=512)
    p.add_argument("--layer", choices=["first", "last"], default="first")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    tune_allocator()
    torch.set_num_threads(args.threads)
    d = load_dataset("fashion-mnist")
    net = trained(d)
    xt, yt = d.x_test.reshape(len(d.x_test), -1)[:10000], d.y_test[:10000]
    layer = "1" if args.layer == "first" else "3"
    n = args.n
    pairs = (
        [(f"{layer}:{i}", f"{layer}:{j}") for i in range(n) for j in range(i + 1, 512)] if n < 512 else None
    )
    load0 = os.getloadavg()
    start, cpu = time.perf_counter(), time.process_time()
    df = pair_effects(net, (xt, yt), pairs=pairs, layer=layer)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    load1 = os.getloadavg()
    print(
        f"{len(df)} pairs of layer {layer} ({args.layer}) x 10,000 examples, {args.threads} threads: "
        f"{wall:.1f} s wall, {cpu:.1f} s CPU, {len(df) / wall:.0f} pairs/s; load average "
        f"{load0[0]:.2f} before, {load1[0]:.2f} after"
    )
    print(
        "fallbacks",
        df.attrs["engine_fallbacks"],
        "served",
        df.attrs["served"],
        "checked",
        df.attrs["checked"],
    )
    print(df[["delta_loss", "interaction_loss"]].describe())
    if args.json:
        out = {"pairs": len(df), "layer": args.layer, "threads": args.threads, "wall_s": wall, "cpu_s": cpu,
               "pairs_per_s": len(df) / wall, "load_before": load0, "load_after": load1,
               "fallbacks": df.attrs["engine_fallbacks"], "checked": df.attrs["checked"]}  # fmt: skip
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
