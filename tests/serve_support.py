"""A small trained model and its explorer, shared by the explorer's API and browser tests."""

from __future__ import annotations

import functools
import hashlib

import torch

from lesion.data import load_dataset
from lesion.models import build_model
from lesion.training.loop import train

ARCH = {"kind": "mlp", "input_shape": [1, 8, 8], "widths": [32, 24], "n_classes": 10}


@functools.cache
def digits_model() -> tuple[torch.nn.Module, object]:
    """A 64-32-24-10 MLP trained 3 epochs on digits (about 0.9 test accuracy), and the data."""
    data = load_dataset("digits", seed=0)
    model = build_model(ARCH, seed=0)
    train(model, data, epochs=3, seed=0)
    return model.eval(), data


def make_explorer(model, data):
    from lesion.serve import Explorer

    return Explorer(
        model, (data.x_test, data.y_test), classes=data.classes, name="digits-mlp", dataset="digits",
        curve_repeats=2, curve_points=9, top_k=6,
    )  # fmt: skip


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]  # fmt: skip


def chromium(playwright_api, executable):
    """Yield a headless Debian Chromium driven by Playwright (the browser tests' module fixture)."""
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
        yield b
        b.close()
