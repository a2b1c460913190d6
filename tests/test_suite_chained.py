"""A suite chained on another suite (``only_unbroken``; the adaptive suite on the naive one): the records it copies
carry the other suite's ``broken_by`` stage numbers, which are not its own stages."""

from __future__ import annotations

import pytest

from advlab.evaluate import evaluate, make_spec
from tests.conftest import Items

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_suite_chained_on_a_suite_counts_its_own_stages_only(digits_model):
    # The stages counted the copied records' broken_by too (the naive suite's stage numbers) besides subtracting
    # them as n_from_other_attacks: a negative count and a ValueError in the summary, on any model the first suite
    # breaks fully (label out of the top 5); `advlab eval --suite adaptive` crashed so.
    model, x, y = digits_model
    specs = [
        make_spec("suite_fast", {"eps": 0.3}, id="naive"),
        make_spec("suite_fast", {"eps": 0.3, "square_queries": 10}, id="second", only_unbroken=["naive"]),
    ]
    result = evaluate(model, Items(x[:16], y[:16]), specs, batch_size=16, quiet=True)
    second = next(a for a in result.summary["attacks"] if a["id"] == "second")
    copied = sum(r["from"] == "naive" for r in result.records["second"])
    assert copied > 0
    assert sum(second["broken_by_counts"].values()) == 16 - copied
    assert second["stages"][-1]["robust_after"] == second["adv_top1"]
    assert all(st["broken"] >= 0 and 0 <= st["robust_after"] <= 1 for st in second["stages"])
