"""Scheduled unfreezing: paper Algorithm 1 (§3.2).

L task adapters (index 0 = bottom, L-1 = top), interval k. At steps i = k, 2k, ... with i <= kL (1-based
optimizer steps, before that step's forward) SELECT() returns adapter indices to add to the trainable set S;
once trainable, always trainable. Each schedule is two small pure functions:

    initial(L, order)   -> adapters trainable at step 0
    select(ctx)         -> adapters to unfreeze now, given the still-frozen ones (ctx: `Selection`)

The starting set. Algorithm 1 starts from S = {C}, the head alone (line 4). The head always trains, so the
trainable set here holds adapter indices only. `lpft` starts with no adapter, as Algorithm 1 does; `gu`, `rand` and
`fun` start with the top adapter trainable (paper §4.1: "the classifier and the top-most adapter unfrozen"; footnote
11: "the 11th layer is always unfrozen first"). So their SELECT() runs L-1 times, at steps k, 2k, ..., (L-1)k, and
FUN measures tr(F) L-1 times, where footnote 11 says L.

`unfreeze` is Algorithm 1's lines 7-9 for any schedule, and `set_trainable` applies S to the model as a
per-adapter `requires_grad` mask: frozen adapters still run in the forward pass, they just get no gradient.
`fun` is the Fisher-driven SELECT (paper §5.3): it looks at tr(F) per adapter, which `unfreeze` asks for only
for schedules with `needs_fisher`, only at unfreeze steps. `rand` draws from an RNG seeded by (seed, step),
so it is a pure function too and resumes exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

from torch import nn


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
    "full": Schedule(_none, None, adapters=False),       # full fine-tuning baseline: no adapters, the encoder trains
}


def unfreeze(schedule: Schedule, step: int, k: int, trainable: set[int], num_layers: int, *, per_step: int = 1,
             seed: int = 0, order: Sequence[int] = (),
             fisher: Callable[[], dict[int, float]] | None = None) -> tuple[list[int], dict[int, float] | None]:
    """Algorithm 1, lines 7-9: at i = k, 2k, ... (i <= kL), SELECT() adapters among the frozen ones to add to S.

    Returns (chosen adapters — empty when nothing unfreezes at `step` —, the tr(F) scores FUN chose by, else None).
    `fisher()` measures tr(F) per adapter; it is called only for FUN and only at an unfreeze step.
    """
    frozen = tuple(sorted(set(range(num_layers)) - trainable))
    if schedule.select is None or not frozen or not is_unfreeze_step(step, k, num_layers):
        return [], None
    scores = fisher() if schedule.needs_fisher else None
    return sorted(schedule.select(Selection(frozen, step, per_step, seed, tuple(order), scores))), scores


def set_trainable(adapters: Sequence[nn.Module], trainable: set[int]) -> None:
    """S as a per-adapter requires_grad mask. Frozen adapters keep running in the forward pass; AdamW skips
    parameters whose grad is None, so a frozen adapter gets no update, no Adam state and no weight decay."""
    for i, adapter in enumerate(adapters):
        for p in adapter.parameters():
            p.requires_grad_(i in trainable)


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


def validate_order(order: Sequence[int], num_layers: int | None = None) -> None:
    """An order must be a permutation of all adapters, or of all but the top one (which then starts).
    Without `num_layers`, only that it lists distinct adapter indices."""
    if len(set(order)) != len(order) or min(order, default=0) < 0:
        raise ValueError(f"order {','.join(map(str, order))}: must list distinct adapter indices (0 = bottom)")
    if num_layers is None:
        return
    expected_all, expected_rest = set(range(num_layers)), set(range(num_layers - 1))
    if set(order) not in (expected_all, expected_rest):
        raise ValueError(f"order {','.join(map(str, order))}: must list each of the {num_layers} adapter indices "
                         f"0..{num_layers - 1} once (or each of 0..{num_layers - 2}, the top one then starts trainable)")
