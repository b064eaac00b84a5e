"""Scheduled unfreezing: paper Algorithm 1 and SPEC §3.

L task adapters (index 0 = bottom, L-1 = top), interval k. At steps i = k, 2k, ... with i <= kL (1-based
optimizer steps, before that step's forward) SELECT() returns adapter indices to add to the trainable set S;
once trainable, always trainable. Each schedule is two small pure functions:

    initial(L, order)   -> adapters trainable at step 0
    select(ctx)         -> adapters to unfreeze now, given the still-frozen ones (ctx: `Selection`)

`fun` is the Fisher-driven SELECT (paper §5.3): `ctx.scores` holds tr(F) per adapter, computed by the
training loop only for schedules with `needs_fisher`. `rand` draws from an RNG seeded by (seed, step), so
it is a pure function too and resumes exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class Selection:
    """What SELECT() may look at."""
    frozen: tuple[int, ...]              # still-frozen adapter indices, ascending
    step: int                            # the current (1-based) optimizer step
    per_step: int = 1                    # m adapters per unfreeze step (paper footnote 12)
    seed: int = 0                        # for `rand`
    order: tuple[int, ...] = ()          # for `order`
    scores: dict[int, float] | None = None  # tr(F) per adapter, for `fun`


@dataclass(frozen=True)
class Schedule:
    initial: Callable[[int, Sequence[int]], frozenset[int]]
    select: Callable[[Selection], list[int]] | None  # None: never unfreezes anything
    needs_fisher: bool = False
    adapters: bool = True                # False only for `full` (full fine-tuning, no adapters)


def _top(num_layers: int, order: Sequence[int] = ()) -> frozenset[int]:
    return frozenset({num_layers - 1})


def _all(num_layers: int, order: Sequence[int] = ()) -> frozenset[int]:
    return frozenset(range(num_layers))


def _none(num_layers: int, order: Sequence[int] = ()) -> frozenset[int]:
    return frozenset()


def _bottom(num_layers: int, order: Sequence[int] = ()) -> frozenset[int]:
    return frozenset({0})


def _order_initial(num_layers: int, order: Sequence[int]) -> frozenset[int]:
    # An order that lists every adapter starts with its first one; otherwise the top one starts (paper Fig. 4).
    return frozenset({order[0]}) if len(order) == num_layers else _top(num_layers)


def select_all(s: Selection) -> list[int]:
    return list(s.frozen)


def select_top_down(s: Selection) -> list[int]:
    return sorted(s.frozen, reverse=True)[:s.per_step]


def select_bottom_up(s: Selection) -> list[int]:
    return sorted(s.frozen)[:s.per_step]


def select_random(s: Selection) -> list[int]:
    rng = random.Random(f"rand:{s.seed}:{s.step}")
    return sorted(rng.sample(list(s.frozen), min(s.per_step, len(s.frozen))))


def select_in_order(s: Selection) -> list[int]:
    return [j for j in s.order if j in s.frozen][:s.per_step]


def select_max_fisher(s: Selection) -> list[int]:
    """FUN: the still-frozen adapter(s) with the largest tr(F); ties go to the higher layer."""
    assert s.scores is not None, "fun needs tr(F) scores"
    return sorted(s.frozen, key=lambda j: (-s.scores[j], -j))[:s.per_step]


SCHEDULES: dict[str, Schedule] = {
    "standard": Schedule(_all, None),
    "lpft": Schedule(_none, select_all),                 # linear probing, then all adapters at step k
    "gu": Schedule(_top, select_top_down),               # gradual unfreezing (Howard & Ruder 2018)
    "gu-rev": Schedule(_bottom, select_bottom_up),       # bottom-up (paper appendix F.1)
    "rand": Schedule(_top, select_random),
    "order": Schedule(_order_initial, select_in_order),  # fixed user order, --order (paper Fig. 4)
    "fun": Schedule(_top, select_max_fisher, needs_fisher=True),
    "full": Schedule(_all, None, adapters=False),        # full fine-tuning baseline
}


def is_unfreeze_step(step: int, k: int, num_layers: int) -> bool:
    """Algorithm 1, line 7: i mod k == 0 and i <= kL."""
    return step % k == 0 and step <= k * num_layers


def last_unfreeze_step(name: str, k: int, num_layers: int, per_step: int = 1, order: Sequence[int] = ()) -> int:
    """The step at which the schedule has unfrozen everything (0 if it starts so)."""
    schedule = SCHEDULES[name]
    frozen = num_layers - len(schedule.initial(num_layers, order))
    if frozen == 0 or schedule.select is None:
        return 0
    if schedule.select is select_all:
        return k
    return k * -(-frozen // per_step)


def validate_order(order: Sequence[int], num_layers: int) -> None:
    """An order must be a permutation of all adapters, or of all but the top one (which then starts)."""
    expected_all, expected_rest = set(range(num_layers)), set(range(num_layers - 1))
    if len(set(order)) != len(order) or set(order) not in (expected_all, expected_rest):
        raise ValueError(f"--order {','.join(map(str, order))}: must list each of the {num_layers} adapter indices "
                         f"0..{num_layers - 1} once (or each of 0..{num_layers - 2}, the top one then starts trainable)")
