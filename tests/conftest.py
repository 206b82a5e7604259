"""Test-wide settings: tiny models run fastest (and undisturbed by other processes) on one thread."""

import torch

torch.set_num_threads(1)
