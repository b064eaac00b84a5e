"""Training order: an epoch's batches are a pure function of (seed, epoch); grouping by length pads less."""

import itertools
import random

from fun.data import epoch_batches, training_batches


def lengths(n=1000, seed=0):
    rng = random.Random(seed)
    return [rng.randint(5, 128) for _ in range(n)]


def padded_tokens(batches, lens):
    return sum(len(b) * max(lens[i] for i in b) for b in batches)


def test_grouped_epoch_is_a_shuffled_partition_with_less_padding():
    lens = lengths()
    plain = epoch_batches(lens, 32, seed=1, epoch=0)
    grouped = epoch_batches(lens, 32, seed=1, epoch=0, group_by_length=True)
    assert len(grouped) == len(plain) == 1000 // 32
    assert all(len(b) == 32 for b in grouped)
    flat = [i for b in grouped for i in b]
    assert len(set(flat)) == len(flat) and set(flat) <= set(range(1000))
    assert padded_tokens(grouped, lens) < 0.7 * padded_tokens(plain, lens)
    assert grouped == epoch_batches(lens, 32, seed=1, epoch=0, group_by_length=True)  # pure
    assert grouped != epoch_batches(lens, 32, seed=1, epoch=1, group_by_length=True)
    assert grouped != epoch_batches(lens, 32, seed=2, epoch=0, group_by_length=True)
    # batch lengths vary from step to step (the batches are shuffled, not sorted)
    maxima = [max(lens[i] for i in b) for b in grouped]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_training_batches_resume_where_they_stopped():
    lens = lengths(100)
    for grouped in (False, True):
        stream = list(itertools.islice(training_batches(lens, 8, seed=3, group_by_length=grouped), 30))
        epoch, position, _ = stream[17]
        resumed = list(itertools.islice(training_batches(lens, 8, 3, epoch, position, grouped), 13))
        assert resumed == stream[17:]
        assert [e for e, _, _ in stream].count(0) == 100 // 8  # the last partial batch of an epoch is dropped
