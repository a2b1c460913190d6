"""Clean and PGD accuracy of Fashion-MNIST models on the full 10k test set (the numbers issue 5 asks for).

    .venv/bin/python benchmarks/fmnist_models.py                         # both shipped models
    .venv/bin/python benchmarks/fmnist_models.py --weights runs/x/best.safetensors --arch mnist_cnn_small

PGD: Linf eps = 0.1, 40 steps of alpha = 0.01, 5 random restarts (restarts only for the samples not yet broken),
sample i's random starts seeded by its test-set index, so the figures are reproducible. Prints one JSON line per
model.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from safetensors.torch import load_file

from advlab.data.fashion_mnist import load_fashion_mnist, to_float_images
from advlab.models.small import build, load_builtin
from advlab.train import TensorLoader, evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--builtin", nargs="*", default=["fmnist_cnn_pgd", "fmnist_cnn_standard"])
    parser.add_argument("--weights", help="a safetensors state dict (e.g. a run's best.safetensors)")
    parser.add_argument("--arch", default="mnist_cnn_small")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--subset", type=int, default=1, help="take every N-th test image (1 = all 10,000)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    images, labels = load_fashion_mnist("test")
    x, y = to_float_images(images)[:: args.subset], labels[:: args.subset]
    models: list[tuple[str, torch.nn.Module]] = []
    if args.weights:
        model = build(args.arch)
        model.load_state_dict(load_file(args.weights))
        models.append((args.weights, model.eval()))
    else:
        models += [(name, load_builtin(name)) for name in args.builtin]
    for name, model in models:
        t0 = time.perf_counter()
        clean, robust = evaluate(
            model, TensorLoader(x, y, 500), eps=args.eps, steps=args.steps, alpha=args.alpha, restarts=args.restarts
        )
        record = {
            "model": name,
            "images": int(y.shape[0]),
            "clean_acc": clean,
            "pgd_acc": robust,
            "attack": f"PGD Linf eps={args.eps} steps={args.steps} alpha={args.alpha} restarts={args.restarts}",
            "seconds": round(time.perf_counter() - t0, 1),
            "threads": torch.get_num_threads(),
        }
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
