"""Training data is a seeded permutation of the whole split, a fresh one each epoch.

On the embedded `arith` benchmark (4000 training rows in file order, ids 0..3999),
through the tasks' SeqIO datasets and the trainer's input pipeline.
"""
import numpy as np
import pytest
import seqio

import dss_tasks  # noqa: F401  (registers the tasks)
from dss_jax import input_pipeline

TASK = "dss_arith_label_gold"
LENGTHS = {"inputs": 64, "targets": 64}
NUM_TRAIN = 4000


@pytest.fixture(autouse=True)
def embedded_vocab(monkeypatch):
    monkeypatch.delenv("DSS_VOCAB", raising=False)


def _ids(seed, count, shard_info=None, task=TASK):
    ds = seqio.get_mixture_or_task(task).get_dataset(
        LENGTHS, split="train", shuffle=True, seed=seed, shard_info=shard_info, num_epochs=None)
    ds = ds.map(lambda ex: ex["example_id"]).take(count).batch(1000)
    return np.concatenate(list(ds.as_numpy_iterator())).tolist()


def test_first_examples_of_an_epoch_spread_over_the_whole_split():
    first = _ids(seed=0, count=64)
    # a 1000-example shuffle buffer over file order would draw all of them from ids < 1064
    assert max(first) - min(first) > 0.8 * NUM_TRAIN
    quarters = np.bincount(np.array(first) * 4 // NUM_TRAIN, minlength=4)
    assert quarters.min() >= 5, quarters


def test_each_epoch_is_a_permutation_of_the_whole_split_and_epochs_differ():
    ids = _ids(seed=0, count=2 * NUM_TRAIN)
    epoch0, epoch1 = ids[:NUM_TRAIN], ids[NUM_TRAIN:]
    assert sorted(epoch0) == sorted(epoch1) == list(range(NUM_TRAIN))
    assert epoch0 != epoch1


def test_same_seed_gives_the_same_order_and_another_seed_another():
    assert _ids(seed=5, count=300) == _ids(seed=5, count=300)
    assert _ids(seed=5, count=300) != _ids(seed=6, count=300)


def test_two_shards_of_an_epoch_are_disjoint_and_cover_it():
    shards = [_ids(seed=3, count=NUM_TRAIN // 2, shard_info=seqio.ShardInfo(i, 2)) for i in range(2)]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(NUM_TRAIN))


def test_shuffle_false_reads_the_split_in_file_order():
    ds = seqio.get_mixture_or_task(TASK).get_dataset(LENGTHS, split="train", shuffle=False)
    ids = [int(i) for i in ds.map(lambda ex: ex["example_id"]).take(50).as_numpy_iterator()]
    assert ids == list(range(50))


def test_resumed_stream_equals_the_uninterrupted_one_across_an_epoch_boundary():
    # the validation split (300 rows) keeps it quick: 10 batches of 50 cross an epoch boundary
    cfg = input_pipeline.StreamConfig(TASK, sequence_lengths=LENGTHS, batch_size=50, seed=11, split="validation")
    uninterrupted = input_pipeline.train_batches(cfg)[0]
    full = [next(uninterrupted) for _ in range(10)]
    resumed = input_pipeline.train_batches(cfg, start_batch=7)[0]
    for expected in full[7:]:
        got = next(resumed)
        for name in expected:
            np.testing.assert_array_equal(expected[name], got[name])
