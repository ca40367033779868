from __future__ import annotations

from lightning_kd.data.samplers import EpochBatchSampler


def flat(sampler):
    return [int(i) for batch in sampler for i in batch]


def test_each_epoch_is_a_permutation_fixed_by_seed_and_epoch():
    sampler = EpochBatchSampler(10, batch_size=4, seed=3)
    first = flat(sampler)
    assert sorted(first) == list(range(10)) and [len(b) for b in sampler] == [4, 4, 2] and len(sampler) == 3
    sampler.set_epoch(1)
    second = flat(sampler)
    assert second != first
    again = EpochBatchSampler(10, batch_size=4, seed=3)  # a resumed run: new object, same epoch
    again.set_epoch(1)
    assert flat(again) == second
    assert flat(EpochBatchSampler(10, batch_size=4, seed=4)) != first


def test_no_shuffle_keeps_the_order():
    assert flat(EpochBatchSampler(7, batch_size=3, shuffle=False)) == list(range(7))


def test_any_64_bit_seed_works():
    """torch.initial_seed() of an unseeded process is a random 64-bit number."""
    assert sorted(flat(EpochBatchSampler(5, batch_size=2, seed=2**64 - 1))) == list(range(5))
