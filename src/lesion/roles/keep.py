"""What ``build`` keeps of a run: the seconds of each stage, and the lesion stages as .npz files in a
folder, reused by a later run with the same settings, model and data (``keep=``, ``lesion atlas``'s
resume)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lesion.core.batch import Data, batches


class Laps:
    """Seconds per stage (``meta["seconds"]``; CPU seconds of this process, all threads, in
    ``meta["cpu_seconds"]``), and the progress bar moved by one per stage."""

    def __init__(self, bar):
        self.bar, self.laps, self.cpu = bar, {}, {}
        self.t, self.c = time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self.laps[name], self.cpu[name] = round(now - self.t, 3), round(cpu - self.c, 3)
        self.t, self.c = now, cpu
        self.bar.update(1)


class Keep:
    """Lesion stages kept as .npz files in a folder, reused when the settings' fingerprint matches."""

    def __init__(self, folder: Path | None, settings: dict):
        self.folder = folder
        self.tag = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, compute, inputs=None) -> dict[str, np.ndarray]:
        """The stage ``name`` kept, or ``compute()`` kept; ``inputs`` (JSON-able): what the stage was given
        beyond the settings (the pairs, the units), part of the file's name."""
        tag = self.tag
        if inputs is not None:
            tag += "-" + hashlib.sha256(json.dumps(inputs, default=str).encode()).hexdigest()[:8]
        path = None if self.folder is None else self.folder / f"{name}-{tag}.npz"
        if path is not None and path.is_file():
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        got = compute()
        if path is not None:
            tmp = path.with_name(f".{path.stem}.tmp.npz")
            np.savez(tmp, **got)
            tmp.replace(path)
        return got


def digest(model: nn.Module, data: Data, batch_size: int) -> str:
    """SHA-256 of the model's weights and buffers and of every tensor of the data."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for b in batches(data, batch_size=batch_size):
        for t in (*b.args, *b.kwargs.values(), b.target):
            if isinstance(t, torch.Tensor):
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
