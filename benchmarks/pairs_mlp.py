"""Rough timing: every pair of the first 512-wide layer of a 784-512-512-10 MLP on 10,000 Fashion-MNIST
test images (trained 2 epochs). Usage: python pairs_bench.py [n_units_subset]"""
import sys, time, torch, numpy as np
torch.set_num_threads(2)
from lesion.data._builtin import load_dataset
from lesion.analyses.pairs import pair_effects
d = load_dataset("fashion-mnist")
x, y = d.x_train.reshape(len(d.x_train), -1), d.y_train
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
opt = torch.optim.Adam(net.parameters(), 1e-3)
t = time.time()
for ep in range(2):
    perm = torch.randperm(len(x))
    for i in range(0, len(x), 256):
        idx = perm[i:i+256]
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx]); opt.zero_grad(); loss.backward(); opt.step()
net.eval()
xt, yt = d.x_test.reshape(len(d.x_test), -1)[:10000], d.y_test[:10000]
print("trained", time.time()-t, "s", flush=True)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 512
pairs = [(f"1:{i}", f"1:{j}") for i in range(n) for j in range(i+1, 512)] if n < 512 else None
t = time.time()
df = pair_effects(net, (xt, yt), pairs=pairs, layer="1")
el = time.time() - t
print(f"{len(df)} pairs in {el:.1f} s ({len(df)/el:.0f} pairs/s); fallbacks {df.attrs['engine_fallbacks']}; checked {df.attrs['checked']}")
print(df[["delta_loss","interaction_loss"]].describe())
