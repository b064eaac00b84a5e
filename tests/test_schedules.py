"""Each schedule's unfreeze steps and order (paper Algorithm 1), run as pure functions."""

import pytest
import torch

from fun.schedules import SCHEDULES, is_unfreeze_step, last_unfreeze_step, set_trainable, unfreeze, validate_order


def simulate(name, L=12, k=3, steps=60, m=1, seed=0, order=(), scores=None):
    """Algorithm 1 without the model, through the loop's own `unfreeze`: the trainable set at step 0 and the
    unfreeze events."""
    schedule = SCHEDULES[name]
    trainable = set(schedule.initial(L, order))
    start, events = sorted(trainable), []
    for step in range(1, steps + 1):
        frozen = set(range(L)) - trainable
        chosen, _ = unfreeze(schedule, step, k, trainable, L, per_step=m, seed=seed, order=order, fisher=lambda: scores)
        if chosen:
            assert set(chosen) <= frozen
            trainable |= set(chosen)
            events.append((step, chosen))
    return start, events, trainable


def test_standard_and_full_never_unfreeze():
    start, events, _ = simulate("standard")
    assert start == list(range(12)) and events == []
    start, events, _ = simulate("full")  # full fine-tuning has no adapters to schedule: the encoder trains
    assert start == [] and events == []


def test_gu_top_down_every_k_steps():
    start, events, final = simulate("gu")
    assert start == [11]
    assert events == [(3 * (i + 1), [10 - i]) for i in range(11)]  # layer 10 at k (not 2k as released)
    assert final == set(range(12))


def test_gu_rev_bottom_up():
    start, events, _ = simulate("gu-rev", L=4, k=2)
    assert start == [0] and events == [(2, [1]), (4, [2]), (6, [3])]


def test_lpft_head_only_then_all_at_k():
    start, events, _ = simulate("lpft", L=4, k=5)
    assert start == [] and events == [(5, [0, 1, 2, 3])]


def test_rand_is_a_seeded_permutation_below_the_top():
    start, events, final = simulate("rand", seed=7)
    order = [e[1][0] for e in events]
    assert start == [11] and sorted(order) == list(range(11)) and final == set(range(12))
    assert order == [e[1][0] for e in simulate("rand", seed=7)[1]]  # pure: same seed, same order
    assert order != [e[1][0] for e in simulate("rand", seed=8)[1]]
    assert order != list(range(10, -1, -1))


def test_fixed_order_and_validation():
    order = [10, 1, 0, 3, 9, 6, 8, 2, 5, 7, 4]
    start, events, _ = simulate("order", order=order)
    assert start == [11] and [e[1][0] for e in events] == order
    start, events, _ = simulate("order", L=3, order=[0, 2, 1])
    assert start == [0] and [e[1][0] for e in events] == [2, 1]
    validate_order(order, 12)
    for bad in ([10, 10, 1], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12]):
        with pytest.raises(ValueError):
            validate_order(bad, 12)


def test_fun_picks_the_frozen_adapter_with_largest_fisher():
    scores = {0: 5.0, 1: 9.0, 2: 1.0, 3: 100.0}  # 3 is trainable from the start: never "selected"
    start, events, _ = simulate("fun", L=4, k=1, scores=scores)
    assert start == [3] and [e[1] for e in events] == [[1], [0], [2]]


def test_unfreeze_m_per_step():
    _, events, _ = simulate("gu", L=6, k=2, m=2)
    assert events == [(2, [3, 4]), (4, [1, 2]), (6, [0])]


def test_unfreeze_steps_stop_at_kL():
    assert [s for s in range(1, 40) if is_unfreeze_step(s, 3, 4)] == [3, 6, 9, 12]
    assert last_unfreeze_step("gu", 800, 12) == 8800
    assert last_unfreeze_step("lpft", 25, 12) == 25
    assert last_unfreeze_step("standard", 25, 12) == 0
    assert last_unfreeze_step("gu", 10, 12, per_step=2) == 60


def test_unfreeze_asks_for_fisher_only_for_fun_at_unfreeze_steps():
    asked = []

    def fisher():
        asked.append(True)
        return {i: float(i % 5) for i in range(12)}

    for step in range(1, 10):
        unfreeze(SCHEDULES["gu"], step, 3, {11}, 12, fisher=fisher)
    assert asked == []
    chosen = [unfreeze(SCHEDULES["fun"], step, 3, {11}, 12, fisher=fisher) for step in range(1, 7)]
    assert len(asked) == 2  # steps 3 and 6 only
    assert chosen[2] == ([9], {i: float(i % 5) for i in range(12)}) and chosen[0] == ([], None)


def test_set_trainable_is_a_requires_grad_mask():
    adapters = [torch.nn.Linear(2, 2) for _ in range(4)]
    set_trainable(adapters, {1, 3})
    assert [all(p.requires_grad for p in a.parameters()) for a in adapters] == [False, True, False, True]
