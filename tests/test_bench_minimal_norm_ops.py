"""benchmarks/minimal_norm_ops.py's split of an attack's CPU time into the model's and the attack's own (the
"outside it" column of docs/benchmarks.md), on runs whose heavy part is known to lie on one side."""

from __future__ import annotations

import torch
from torch import nn

from benchmarks._peers.entries import entry_rank, entry_words
from benchmarks.minimal_norm_ops import Scoped, time_outside_model


def _wide_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(),
                         nn.Linear(2048, 10))


def test_the_wrapper_keeps_the_models_mode() -> None:
    assert Scoped(_wide_model().eval()).training is False
    assert Scoped(_wide_model().train()).training is True


def test_the_model_and_its_input_gradient_count_inside_and_the_rest_outside() -> None:
    model = Scoped(_wide_model())
    x = torch.rand(64, 512, requires_grad=True)
    big = torch.rand(256, 256)

    def model_heavy() -> None:  # forwards and input gradients: the model's work
        for _ in range(3):
            torch.autograd.grad(model(x).sum(), x)

    def attack_heavy() -> None:  # one cheap forward, then a long computation of the attack's own: ops, and
        with torch.no_grad():  # Python between them, which no profiler event covers
            model(x[:4])
        for _ in range(100):
            big.matmul(big).topk(8, dim=1)
        total = 0
        for i in range(300_000):
            total += i * i

    def python_only() -> None:
        with torch.no_grad():
            model(x[:4])
        total = 0
        for i in range(300_000):
            total += i * i

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # elapsed time on one thread, as the benchmark runs
    try:
        inside, outside = time_outside_model(model_heavy)
        assert inside > 4 * outside >= 0
        inside, outside = time_outside_model(attack_heavy)
        assert outside > 4 * inside > 0
        inside, outside = time_outside_model(python_only)
        assert outside > 4 * inside > 0
    finally:
        torch.set_num_threads(threads)


def test_entries_keep_names_containing_a_word_or_named_exactly_after_an_equals_sign() -> None:
    words = entry_words(" =advlab fmn l0 , ,fab ")
    assert words == ["=advlab fmn l0", "fab"]
    assert entry_rank("advlab fmn l0", words) == 0
    assert entry_rank("advlab fmn l0 a1", words) is None  # "=" keeps the one so named only
    assert entry_rank("adv_lib fab", words) == 1
    assert entry_rank("advlab fmn l0 a1", ["fmn l0"]) == 0
