"""Latency of one ``POST /api/evaluate`` of the explorer, measured from a request loop over real HTTP.

    python benchmarks/serve_latency.py                       # trains a 2x512 MLP on mnist5k first (~10 s)
    python benchmarks/serve_latency.py --model m.safetensors --requests 500 --out latency.json

Starts ``lesion serve MODEL --port 0`` in its own process (as a user would), waits for its URL, sends a
few warm-up requests, then ``--requests`` evaluations one after another, each a different random lesion
of 1 to ``--max-units`` units, so that the server's result cache never answers and every request runs
the model on all held-out examples (1,000 for mnist5k). Reports the median, 10th and 90th percentile and
the 1-minute load average before and after, since other processes on the machine slow it down.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def main() -> None:
    args = parse()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or train(Path(tmp) / "mlp.safetensors")
        result = measure(model, args)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="model file (default: train a 2x512 MLP on mnist5k, 5 epochs)")
    p.add_argument("--dataset", default=None, help="dataset (default: the model's)")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--max-units", type=int, default=50, help="largest lesion drawn")
    p.add_argument("--threads", type=int, default=None, help="passed to lesion serve --threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    return p.parse_args()


def train(path: Path) -> Path:
    cmd = ["lesion", "train", "--widths", "512,512", "--dataset", "mnist5k", "--epochs", "5"]
    cmd += ["--out", str(path)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return path


def measure(model: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "lesion.cli", "serve", str(model), "--port", "0"]
    cmd += ["--dataset", args.dataset] if args.dataset else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as server:
        try:
            url = server.stdout.readline().split()[2]
            return loop(url, args)
        finally:
            server.terminate()
            server.wait(timeout=30)


def loop(url: str, args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    with httpx.Client(base_url=url, timeout=60) as client:
        info = client.get("/api/model").json()
        units = [f"{s['name']}:{i}" for s in info["sites"] for i in range(s["width"])]
        lesions = [rng.sample(units, rng.randint(1, args.max_units)) for _ in range(args.requests + 5)]
        load_before = os.getloadavg()[0]
        for lesion in lesions[:5]:  # warm-up: first calls allocate
            client.post("/api/evaluate", json={"units": lesion}).raise_for_status()
        times = []
        for lesion in lesions[5:]:
            start = time.perf_counter()
            client.post("/api/evaluate", json={"units": lesion}).raise_for_status()
            times.append(time.perf_counter() - start)
        load_after = os.getloadavg()[0]
    ms = sorted(t * 1000 for t in times)
    return {
        "url": url, "model": info["name"], "dataset": info["dataset"],
        "held_out_examples": info["intact"]["n"],
        "units": info["n_units"], "requests": len(ms), "lesion_sizes": f"1..{args.max_units}, all distinct",
        "median_ms": round(statistics.median(ms), 2), "p10_ms": round(ms[len(ms) // 10], 2),
        "p90_ms": round(ms[len(ms) * 9 // 10], 2), "mean_ms": round(statistics.fmean(ms), 2),
        "load_average_1min": {"before": load_before, "after": load_after}, "cpus": os.cpu_count(),
        "threads": args.threads or "torch default",
    }  # fmt: skip


if __name__ == "__main__":
    main()
