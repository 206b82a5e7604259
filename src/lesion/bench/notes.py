"""What each workload measures, written into the results beside its numbers."""

_NOTES = {
    "W1": [
        "data: mnist5k's 5,000 digits tiled to n_examples; MLP trained (sizes.mlp_epochs) on 4,000 of them",
        "lesion = Runner(...) + single-unit sweep: its intact pass and its own 2-unit check included",
        "captum: LayerFeatureAblation per layer and batch; ppe 1 uses an aggregate (correct, loss) "
        "forward, ppe > 1 a per-example one; captum_best = the fastest ppe",
        "hook_loop: one full forward per unit, a plain forward hook zeroing the unit in place",
        "flops count Linear/Conv multiply-adds (x2) only; rank-1 updates are memory-bound, so "
        "lesion/floor well above 1 is expected",
        "later_layers floor: PEERS.md's 'prefix once, later layers per lesion' method (not timed)",
    ],
    "W2": [
        "same model and data as W1; orders: numpy default_rng(0) permutations of all hidden units",
        "lesion = Runner(...) + cumulative per order (its 2-point check on every order included)",
        "hook_loop: one full forward per count, hooks multiplying each layer by a 0/1 mask",
    ],
    "W3": [
        "data: the first n_examples of mnist5k's digits; convnet seed-0 weights, BN statistics "
        "estimated on those images (momentum None), eval mode",
        "captum: LayerFeatureAblation on each ReLU with a (1, C, 1, 1) mask, one feature per channel",
    ],
    "W4": [
        "a fresh process loads model and data, warms up on 100 examples, trims the heap, resets VmHWM "
        "(/proc/self/clear_refs), runs W1 with lesion; peak_mb = VmHWM after - VmRSS before (torch CPU "
        "tensors are invisible to tracemalloc)",
        "data: mnist5k's 5,000 digits tiled to n_examples",
    ],
}
