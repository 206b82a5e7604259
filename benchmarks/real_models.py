"""Real sizes from configs (issue 28, item 3): BERT-base, ViT-B/16, ResNet-50 and the Llama-3.2-1B-shaped
model of W11 (Hugging Face, random weights: no hub is reachable here, and the work does not depend on the
weights). For each model, in a process of its own (so its peak memory is its own):

- its sites, as ``lesion layers`` lists them (``find_sites``);
- every attention head deleted alone, exactly (BERT, ViT: 144 heads; Llama: W11 times its 512 heads);
- every neuron (channel) of one block deleted alone, exactly: the last block's MLP (3,072 neurons) of BERT
  and ViT, 8,192 of Llama (closed form); the last bottleneck of ResNet-50 (its three ReLU sites: 512 + 512
  + 2,048 channels);
- every unit of the model by triage (``sweep(..., triage=...)``: the estimate for all, exact for the
  budget: 1% by default, ``--llama-triage`` for Llama, 20 minutes by default);
- a hook loop (one full pass per unit, ``lesion.ablate``) on a spread subset of each exact list, checked
  against lesion's numbers and timed, extrapolated to the whole list.

Zero replacement; the metric is ``Classification`` (cross-entropy and accuracy) against seeded random
labels, next-token loss for Llama; data: 8 seeded random sequences of 128 tokens (BERT) or 8 random
224 x 224 images (ViT, ResNet); for Llama ``--llama-sequences`` (1 by default) of 128 tokens: every exact
Llama lesion scores 128,256 logits per token, about 1.3 s a neuron on 8 sequences on 2 cores.
Time (wall, ``time.perf_counter``) and the process's peak resident memory after each part
(``ru_maxrss``: the peak so far) are recorded, with the load average.

Usage: python benchmarks/real_models.py --out benchmarks/results/DATE-real-models.json
       [--models bert,vit,resnet,llama] [--quick]  (2-block stand-ins, seconds: to check the script)
       [--triage-only]  (skip the exact heads and block)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import torch

PEERS = 6  # units of each exact list the hook loop is timed on


def build(name: str, quick: bool):
    import transformers as tf

    if name == "llama":
        from lesion.bench._common import FULL, QUICK
        from lesion.bench._real import llama_1b

        return llama_1b(QUICK if quick else FULL)
    torch.manual_seed(0)
    blocks = 2 if quick else 12
    if name == "bert":
        cfg = tf.BertConfig(num_hidden_layers=blocks, num_labels=2)
        if quick:
            cfg = tf.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                                num_labels=2)  # fmt: skip
        return tf.BertForSequenceClassification(cfg).eval()
    if name == "vit":
        cfg = tf.ViTConfig(num_hidden_layers=blocks, num_labels=10)
        if quick:
            cfg = tf.ViTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                               image_size=32, patch_size=16, num_labels=10)  # fmt: skip
        return tf.ViTForImageClassification(cfg).eval()
    depths = [1, 1, 1, 1] if quick else [3, 4, 6, 3]
    cfg = tf.ResNetConfig(layer_type="bottleneck", depths=depths, hidden_sizes=[256, 512, 1024, 2048],
                          num_labels=10)  # fmt: skip
    return tf.ResNetForImageClassification(cfg).eval()


def data_for(name: str, model, quick: bool, sequences: int = 1) -> dict:
    g = torch.Generator().manual_seed(0)
    n = 4 if quick else 8
    if name == "llama":
        return {
            "input_ids": torch.randint(
                0, model.config.vocab_size, (sequences, 16 if quick else 128), generator=g
            )
        }
    classes = model.config.num_labels
    labels = torch.randint(0, classes, (n,), generator=g)
    if name == "bert":
        ids = torch.randint(0, model.config.vocab_size, (n, 16 if quick else 128), generator=g)
        return {"input_ids": ids, "labels": labels}
    side = 32 if quick else 224
    return {"pixel_values": torch.randn(n, 3, side, side, generator=g), "labels": labels}


def parts(name: str, sites) -> dict[str, list[str]]:
    """The exact lists: every head, and every unit of one block."""
    heads = [f"{s.name}:{h}" for s in sites if s.heads for h in range(s.width)]
    if name == "resnet":
        last = max(s.name.split(".layers.")[0] + ".layers." + s.name.split(".layers.")[1].split(".")[0]
                   for s in sites if ".layers." in s.name)  # fmt: skip
        block = [f"{s.name}:{j}" for s in sites if s.name.startswith(last + ".") or s.name == last + ".activation"
                 for j in range(s.width)]  # fmt: skip
    else:
        mlp = [s for s in sites if not s.heads and ("intermediate" in s.name or ".mlp." in s.name)]
        block = [f"{mlp[-1].name}:{j}" for j in range(mlp[-1].width)]
    out = {"block": block}
    if heads and name != "llama":  # Llama's 512 heads: W11, on 8 sequences
        out = {"heads": heads, **out}
    return out


def hook_loop(model, data, units, sites) -> np.ndarray:
    import lesion

    out = np.zeros(len(units))
    for k, u in enumerate(units):
        with torch.no_grad(), lesion.ablate(model, u, sites=sites):
            inputs = {key: v for key, v in data.items() if key != "labels"}
            logits = model(**inputs).logits.float()
            if "labels" in data:
                out[k] = float(torch.nn.functional.cross_entropy(logits, data["labels"]))
            else:  # next-token loss
                ids = data["input_ids"]
                out[k] = float(
                    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
                )
    return out


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(name: str, quick: bool, sequences: int, llama_triage: str, triage_only: bool = False) -> dict:
    import lesion
    from lesion.util.alloc import tune_allocator

    tune_allocator()  # as the command line does
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    model = build(name, quick)
    data = data_for(name, model, quick, sequences)
    sites = lesion.find_sites(model, data)
    result = {
        "model": name, "parameters": sum(p.numel() for p in model.parameters()),
        "build_seconds": time.perf_counter() - t0, "rss_after_build_mb": peak_mb(),
        "examples": len(data["input_ids" if name == "llama" else "labels"]), "input_shape": list(next(iter(data.values())).shape),
        "sites": [{"name": s.name, "width": s.width, "heads": bool(s.heads)} for s in sites],
        "units": sum(s.width for s in sites), "load_at_start": list(os.getloadavg()),
    }  # fmt: skip
    metric = lesion.metrics.NextTokenLoss() if name == "llama" else lesion.metrics.Classification()
    budget = llama_triage if name == "llama" else "1%"
    for part, units in ({} if triage_only else parts(name, sites)).items():
        start = time.perf_counter()
        df = lesion.sweep(model, data, units, metric, sites=sites, batch_size=result["examples"])
        seconds = time.perf_counter() - start
        idx = list(range(0, len(units), max(1, len(units) // PEERS)))
        start = time.perf_counter()
        ref = hook_loop(model, data, [units[i] for i in idx], sites)
        t_hook = (time.perf_counter() - start) * len(units) / len(idx)
        diff = float(np.abs(ref - df["loss"].to_numpy()[idx]).max())
        assert diff <= 1e-4 * max(1.0, float(np.abs(ref).max())), (name, part, diff)
        result[part] = {
            "units": len(units), "first": units[0], "last": units[-1], "seconds": seconds,
            "units_per_second": len(units) / seconds, "hook_loop_seconds_extrapolated": t_hook,
            "hook_loop_units_timed": len(idx), "hook_loop/lesion": t_hook / seconds,
            "max_abs_diff_loss": diff, "served": df.attrs["served"],
            "fallbacks": {k: v[:200] for k, v in df.attrs["engine_fallbacks"].items()}, "peak_rss_mb": peak_mb(),
        }  # fmt: skip
        print(f"{name} {part}: {len(units)} units in {seconds:.1f} s, hook loop {t_hook:.1f} s (extrapolated)",
              flush=True)  # fmt: skip
    start = time.perf_counter()
    df = lesion.sweep(model, data, metric=metric, sites=sites, triage=budget, batch_size=result["examples"])
    tri = df.attrs["triage"]
    result["triage"] = {
        "units": len(df), "budget": budget, "exact": int(tri["exact"]), "seconds": time.perf_counter() - start,
        "k": tri["k"], "recall": tri["recall"], "low": tri["low"], "high": tri["high"], "claim": tri["claim"],
        "peak_rss_mb": peak_mb(),
    }  # fmt: skip
    print(f"{name} triage: {len(df)} units in {result['triage']['seconds']:.1f} s", flush=True)
    result["load_at_end"] = list(os.getloadavg())
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", default="bert,vit,resnet")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--llama-sequences", type=int, default=1)
    ap.add_argument("--llama-triage", default="20min")
    ap.add_argument("--triage-only", action="store_true", help="skip the exact heads and block")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one model, JSON on stdout's last line
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.quick, args.llama_sequences, args.llama_triage, args.triage_only)))
        return
    if os.path.exists(args.out):
        sys.exit(f"{args.out} exists; expected a new file")
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                           "threads": 2}, "quick": args.quick, "models": {}}  # fmt: skip
    for name in args.models.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--out",
            args.out,
            "--one",
            name,
            "--llama-sequences",
            str(args.llama_sequences),
            "--llama-triage",
            args.llama_triage,
        ] + (["--quick"] if args.quick else []) + (["--triage-only"] if args.triage_only else [])
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        sys.stderr.write(run.stderr[-2000:])
        lines = run.stdout.strip().splitlines()
        print("\n".join(lines[:-1]))
        if run.returncode != 0:
            sys.exit(f"{name} failed (exit {run.returncode}): {run.stderr[-3000:]}")
        results["models"][name] = json.loads(lines[-1])
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
