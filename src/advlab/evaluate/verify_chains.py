"""Chained attacks' records (``only_unbroken``) against what the engine could have kept, for
:func:`advlab.evaluate.verify.verify_run` (review 2, F7)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .records import fully_broken


def chained_on(aid: str, deps: Mapping[str, Sequence[str]]) -> set[str]:
    """``aid`` and every attack it was chained on (``only_unbroken``), directly or through another: a chained
    record copied from an earlier attack keeps that attack's example and names it in ``from``."""
    out, stack = {aid}, list(deps.get(aid, ()))
    while stack:
        d = stack.pop()
        if d not in out:
            out.add(d)
            stack.extend(deps.get(d, ()))
    return out


def chain_mismatches(
    deps: Mapping[str, Sequence[str]],
    recs_by: Mapping[str, Mapping[int, Mapping[str, Any]]],
    verdict: Mapping[tuple[str, int], tuple[bool, bool]],
    own: Mapping[str, Mapping[int, tuple[bool, bool]]],
    own_file: Mapping[str, str | None],
) -> list[str]:
    """One batch's chained records (``only_unbroken``) against what the engine could have written (review 2, F7).

    :func:`~advlab.evaluate.engine.attack_batch` runs a chained attack on every sample none of its predecessors
    broke fully (saving its example in its own file) and keeps, per sample, the strongest of its own record and
    theirs (:func:`~advlab.evaluate.records.strength`). So, with the verified top-1 outcomes (``verdict``, ``own``:
    ``(broken, borderline)``; a borderline outcome decides nothing): a record copied from a predecessor (``from``)
    is that predecessor's record of the sample; a record is broken where a predecessor's is, and where the
    attack's own example is; and a sample without an own example was broken fully by some predecessor.
    Otherwise a broken record swapped for an earlier stage's unbroken one would raise the robust accuracy.
    """
    out = []
    for aid, ds in deps.items():
        if not ds or (own_file.get(aid) is not None and aid not in own):  # own file unreadable: reported already
            continue
        mine = own.get(aid, {})
        for i, r in recs_by[aid].items():
            v = verdict.get((aid, i))
            if v is None:  # its own check failed: reported already
                continue
            where, frm = f"{aid}, sample {i}", r.get("from")
            if frm is not None and not any(
                (d_rec := recs_by[d].get(i)) is not None
                and (d_rec.get("from") or d) == frm
                and {k: w for k, w in d_rec.items() if k not in ("time_s", "from")}
                == {k: w for k, w in r.items() if k not in ("time_s", "from")}
                for d in ds
            ):
                out.append(f"{where}: says it is {frm!r}'s record, which no attack it was chained on holds for it")
            unbroken = not v[0] and not v[1]
            by = [d for d in ds if verdict.get((d, i), (False, True)) == (True, False)]
            if unbroken and by:
                out.append(
                    f"{where}: the record is not broken, but {by[0]!r}, which it was chained on (only_unbroken), "
                    "broke the sample: a chained record is the worst case of its own and theirs"
                )
            elif unbroken and mine.get(i) == (True, False):
                out.append(f"{where}: the record is not broken, but its own example ({own_file[aid]}) breaks the model")
            if i not in mine and not any(
                (d_rec := recs_by[d].get(i)) is not None
                and fully_broken(d_rec)
                and verdict.get((d, i), (True, False)) != (False, False)
                for d in ds
            ):
                out.append(
                    f"{where}: {aid!r} saved no example of its own for the sample, yet no attack it was chained on "
                    "broke it fully (it attacks every such sample)"
                )
    return out
