"""Channels-last vs NCHW layout for advlab's ImageNet models on CPU: forward and forward+input-gradient cost.

``load_model`` runs torchvision/timm/EfficientNet-Lite backbones channels-last by default
(``ImageClassifier(channels_last=True)``); this script measures what that buys. Rounds interleave the two
layouts so a noisy machine slows both alike; the table gives medians over rounds of the per-image CPU time
(``time.process_time``: both threads' work, less sensitive to other jobs than wall time) and of the ratio.
Weights do not change timing, so VGG11/ResNet50 run with random weights when their checkpoints are absent.

    .venv/bin/python benchmarks/models_channels_last.py --models efficientnet_lite0 vgg11 resnet50 --batch 16 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from advlab.models import load_model


def _cost(model: torch.nn.Module, x: torch.Tensor, grad: bool) -> float:
    """CPU seconds per image of one forward (or forward + gradient w.r.t. the input)."""
    start = time.process_time()
    if grad:
        xg = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(xg), torch.zeros(len(x), dtype=torch.long))
        torch.autograd.grad(loss, xg)
    else:
        with torch.inference_mode():
            model(x)
    return (time.process_time() - start) / len(x)


def _load(name: str, channels_last: bool) -> torch.nn.Module:
    try:
        return load_model(name, channels_last=channels_last, download=False)
    except FileNotFoundError:
        return load_model(name, channels_last=channels_last, pretrained=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0", "vgg11", "resnet50"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {args.rounds} rounds")
    print("| model | pass | NCHW ms/img | channels-last ms/img | speed-up |")
    print("|---|---|---:|---:|---:|")
    for name in args.models:
        nchw, cl = _load(name, False), _load(name, True)
        x = torch.rand(args.batch, *nchw.input_size, generator=torch.Generator().manual_seed(0))
        for grad in (False, True):
            _cost(nchw, x, grad), _cost(cl, x, grad)  # warm-up: oneDNN primitive creation
            a, b = [], []
            for _ in range(args.rounds):
                a.append(_cost(nchw, x, grad))
                b.append(_cost(cl, x, grad))
            ratio = statistics.median(p / q for p, q in zip(a, b, strict=True))
            label = "fwd+grad" if grad else "forward"
            print(
                f"| {name} | {label} | {1000 * statistics.median(a):.0f} | {1000 * statistics.median(b):.0f} "
                f"| {ratio:.2f}x |"
            )


if __name__ == "__main__":
    main()
