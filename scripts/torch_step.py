#!/usr/bin/env python3
"""PyTorch baseline for `cargo bench -p tolaria --bench step_compare` (CPU)
and `--bench gpu_step` (CUDA).

Trains the reference hosts of DESIGN §7 exactly as Esper builds them (same
layers, shapes, batch 128, cross-entropy, AdamW lr 1e-3 weight decay 0.01),
and `gnn-dense` (a GNN-sized dense network over 64 nodes, batch = nodes), for a
fixed number of steps on random inputs at a given thread count, and prints one
JSON object: {"torch": version, "threads": n, "hosts": {name: images_per_second}}.

Arguments: THREADS STEPS_JSON [DEVICE [BATCH]] (DEVICE cpu or cuda, default
cpu; BATCH default 128). On CUDA the timed loop is bracketed by
torch.cuda.synchronize().
"""
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH = 128


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


def cnn(c1, c2, k):
    pad = k // 2
    return nn.Sequential(
        nn.Conv2d(1, c1, k, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, k, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * 7 * 7, 10),
    )


def gnn_dense():
    """The GNN-sized dense network of `cargo bench -p tolaria --bench
    dense`: three 64-wide ReLU layers and a 10-way head over 64 nodes."""
    layers = []
    for _ in range(3):
        layers += [nn.Linear(64, 64), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(64, 10))


# name: (model, one input's shape)
HOSTS = {
    "mlp": (mlp, (1, 28, 28)),
    "cnn": (lambda: cnn(16, 32, 3), (1, 28, 28)),
    "cnn-impaired": (lambda: cnn(4, 8, 1), (1, 28, 28)),
    "gnn-dense": (gnn_dense, (64,)),
}


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def rate(host, steps, warmup, device="cpu", batch=BATCH):
    build, shape = host
    torch.manual_seed(0)
    model = build().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    x = torch.randn(batch, *shape, device=device)
    y = torch.arange(batch, device=device) % 10
    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def main():
    threads = int(sys.argv[1])
    steps = json.loads(sys.argv[2])  # {"mlp": 200, ...}
    device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
    batch = int(sys.argv[4]) if len(sys.argv) > 4 else BATCH
    torch.set_num_threads(threads)
    out = {
        name: rate(HOSTS[name], n, max(3, n // 10), device, batch)
        for name, n in steps.items()
    }
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "hosts": out}))


if __name__ == "__main__":
    main()
