"""What attacking advlab.models.prepare's copy of a model buys, and what it changes.

For each model and batch size: CPU time of one attack step (forward + input gradient of the summed
cross-entropy) on the model as given (NCHW input, as an attack calls it) and on ``prepare(model, x)`` (BN folded,
ReLU/max-pool swapped, channels-last weights and input), in interleaved rounds; the largest logit difference
relative to the logits' scale, the relative L2 difference of the input gradients, and what preparing costs
once (copy, trace, verification). Models without downloadable weights here are built with random BN statistics.

    .venv/bin/python benchmarks/prepared_model.py --models efficientnet_lite0 resnet50 vgg11 --batch 8 16 --rounds 5
    .venv/bin/python benchmarks/prepared_model.py --models fmnist_cnn_pgd --batch 128 900 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from advlab.models import load_model, preparation_record, prepare


def _load(name: str) -> nn.Module:
    try:
        model = load_model(name, download=False)
    except FileNotFoundError:
        model = load_model(name, pretrained=False)
        g = torch.Generator().manual_seed(0)
        for m in model.modules():  # fresh BN layers are the identity; give them statistics to fold
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xg = x.clone().requires_grad_(True)
    logits = model(xg)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(logits, y, reduction="sum"), xg)
    return logits.detach(), grad


def _cpu(model: nn.Module, x: torch.Tensor, y: torch.Tensor, calls: int = 2) -> float:
    start = time.process_time()
    for _ in range(calls):
        _step(model, x, y)
    return (time.process_time() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0", "resnet50", "vgg11"])
    parser.add_argument("--batch", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds, CPU")
    print(
        "| model | batch | changes | as given ms | prepared ms | prepared / as given | logit diff | grad diff "
        "| prepare s |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        model = _load(name)
        for batch in args.batch:
            g = torch.Generator().manual_seed(batch)
            x = torch.rand(batch, *model.input_size, generator=g)
            y = torch.randint(0, model(x[:1]).shape[1], (batch,), generator=g)
            start = time.perf_counter()
            folded = prepare(model, x)
            build = time.perf_counter() - start
            (want, want_grad), (got, got_grad) = _step(model, x, y), _step(folded, x, y)
            logit_diff = float((want - got).abs().max() / want.abs().max())
            grad_diff = float((want_grad - got_grad).norm() / want_grad.norm())
            a, b = [], []
            for _ in range(args.rounds):
                a.append(_cpu(model, x, y))
                b.append(_cpu(folded, x, y))
            ratio = statistics.median(q / p for p, q in zip(a, b, strict=True))
            state = ", ".join(preparation_record(folded)["changes"]) or "none (as given)"
            print(
                f"| {name} | {batch} | {state} | {1000 * statistics.median(a):.0f} | {1000 * statistics.median(b):.0f} "
                f"| {ratio:.2f} | {logit_diff:.1e} | {grad_diff:.1e} | {build:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
