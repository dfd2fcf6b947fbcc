#!/usr/bin/env python3
"""PyTorch CPU baseline for `cargo bench -p tolaria --bench step_compare`.

Trains the reference hosts of DESIGN §7 exactly as Esper builds them (same
layers, shapes, batch 128, cross-entropy, AdamW lr 1e-3 weight decay 0.01) for a
fixed number of steps on random inputs at a given thread count, and prints one
JSON object: {"torch": version, "threads": n, "hosts": {name: images_per_second}}.
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


HOSTS = {
    "mlp": lambda: mlp(),
    "cnn": lambda: cnn(16, 32, 3),
    "cnn-impaired": lambda: cnn(4, 8, 1),
}


def rate(build, steps, warmup):
    torch.manual_seed(0)
    model = build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    x = torch.randn(BATCH, 1, 28, 28)
    y = torch.arange(BATCH) % 10
    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - start)


def main():
    threads = int(sys.argv[1])
    steps = json.loads(sys.argv[2])  # {"mlp": 200, ...}
    torch.set_num_threads(threads)
    out = {name: rate(HOSTS[name], n, max(3, n // 10)) for name, n in steps.items()}
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "hosts": out}))


if __name__ == "__main__":
    main()
