"""Input pipeline: paired conversion, task ids, packing, mixtures, exact resumption."""
import itertools

import numpy as np
import pytest

import trainer_support as support
from dss_jax import input_pipeline


def _take(iterator, n):
    return list(itertools.islice(iterator, n))


def test_paired_example_becomes_a_label_row_then_a_rationale_row():
    cfg = input_pipeline.StreamConfig("trainer_test_paired", {"inputs": 12, "targets": 8}, batch_size=2,
                                     shuffle=False)
    (batch,), = [_take(input_pipeline.train_batches(cfg)[0], 1)]
    first = support.synthetic_example(0)
    assert batch["encoder_input_tokens"].shape == (4, 12)
    np.testing.assert_array_equal(batch["encoder_input_tokens"][0, :len(first["label_inputs"])], first["label_inputs"])
    np.testing.assert_array_equal(batch["encoder_input_tokens"][1, :len(first["rationale_inputs"])],
                                  first["rationale_inputs"])
    np.testing.assert_array_equal(batch["decoder_target_tokens"][1, :len(first["rationale_targets"])],
                                  first["rationale_targets"])
    assert set(np.unique(batch["task_ids"][0][batch["decoder_loss_weights"][0] > 0])) == {0}
    assert set(np.unique(batch["task_ids"][1][batch["decoder_loss_weights"][1] > 0])) == {1}
    assert batch["decoder_loss_weights"].dtype == np.float32


def test_packed_paired_rows_keep_task_ids_per_segment():
    cfg = input_pipeline.StreamConfig("trainer_test_paired", {"inputs": 24, "targets": 16}, batch_size=2,
                                     shuffle=False, pack=True)
    batch = _take(input_pipeline.train_batches(cfg)[0], 1)[0]
    for name in ("encoder_segment_ids", "decoder_segment_ids", "encoder_positions", "decoder_positions"):
        assert name in batch
    seg, task, w = batch["decoder_segment_ids"][0], batch["task_ids"][0], batch["decoder_loss_weights"][0]
    assert seg.max() >= 2, "a 16-token target row should hold more than one short sequence"
    first = support.synthetic_example(0)
    n_label = len(first["label_targets"])
    np.testing.assert_array_equal(task[:n_label], 0)
    np.testing.assert_array_equal(task[n_label:n_label + len(first["rationale_targets"])], 1)
    assert np.all(w[seg == 0] == 0)


def test_count_sequences_counts_packed_segments_per_task():
    cfg = input_pipeline.StreamConfig("trainer_test_paired", {"inputs": 24, "targets": 16}, batch_size=4,
                                     shuffle=False, pack=True)
    batch = _take(input_pipeline.train_batches(cfg)[0], 1)[0]
    counts = input_pipeline.count_sequences(batch)
    assert counts["label"] + counts["rationale"] == int((batch["decoder_segment_ids"].max(axis=1)).sum())


def test_mixture_examples_carry_the_task_id_of_their_subtask():
    cfg = input_pipeline.StreamConfig("trainer_test_mix", rationale_tasks=("trainer_test_rationale",), sequence_lengths={"inputs": 12, "targets": 8}, batch_size=16, seed=3)
    batch = _take(input_pipeline.train_batches(cfg)[0], 1)[0]
    kinds = set()
    for row in range(16):
        ids = batch["task_ids"][row][batch["decoder_loss_weights"][row] > 0]
        assert len(set(ids)) == 1
        kinds.add(int(ids[0]))
        prefix = batch["encoder_input_tokens"][row, 0]
        assert prefix == (3 if ids[0] == 0 else 4)  # label inputs start with 3, rationale inputs with 4
    assert kinds == {0, 1}


def test_restart_at_batch_n_continues_the_same_stream():
    cfg = input_pipeline.StreamConfig("trainer_test_mix", rationale_tasks=("trainer_test_rationale",), sequence_lengths={"inputs": 12, "targets": 8}, batch_size=8, seed=7)
    full = _take(input_pipeline.train_batches(cfg)[0], 9)
    resumed = _take(input_pipeline.train_batches(cfg, start_batch=5)[0], 4)
    for a, b in zip(full[5:], resumed):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])


def test_position_from_other_settings_is_refused():
    cfg = input_pipeline.StreamConfig("trainer_test_mix", rationale_tasks=("trainer_test_rationale",), sequence_lengths={"inputs": 12, "targets": 8}, batch_size=8, seed=7)
    position = cfg.position(12)
    assert cfg.check_position(position) == 12
    other = input_pipeline.StreamConfig("trainer_test_mix", rationale_tasks=("trainer_test_rationale",), sequence_lengths={"inputs": 12, "targets": 8}, batch_size=16, seed=7)
    with pytest.raises(ValueError, match="batch_size"):
        other.check_position(position)


def test_unknown_task_name_is_a_clear_error():
    with pytest.raises(KeyError, match="no seqio task or mixture named"):
        input_pipeline.get_provider("no_such_task_xyz")


# ----------------------------------------------------------------------------- pack="buckets"

def _bucketed(task="trainer_test_paired", **kwargs):
    values = dict(sequence_lengths={"inputs": 16, "targets": 8}, batch_size=4, shuffle=False, pack="buckets",
                  encoder_row_lens=(12, 16), decoder_row_lens=(6, 8))
    values.update(kwargs)
    return input_pipeline.StreamConfig(task, **values)


def _segments(batch):
    """(inputs, targets, task id) of every packed sequence of a batch."""
    out = []
    for r in range(batch["encoder_input_tokens"].shape[0]):
        for segment in range(1, int(batch["encoder_segment_ids"][r].max()) + 1):
            enc, dec = batch["encoder_segment_ids"][r] == segment, batch["decoder_segment_ids"][r] == segment
            out.append((batch["encoder_input_tokens"][r][enc].tolist(), batch["decoder_target_tokens"][r][dec].tolist(),
                        int(batch["task_ids"][r][dec][0])))
    return out


def test_a_bucketed_paired_step_holds_exactly_the_label_and_rationale_sequences_of_its_examples():
    first, second = _take(input_pipeline.train_batches(_bucketed())[0], 2)
    for batch, examples in ((first, range(0, 4)), (second, range(4, 8))):
        expected = []
        for i in examples:
            ex = support.synthetic_example(i)
            expected += [(ex["label_inputs"], ex["label_targets"], 0), (ex["rationale_inputs"], ex["rationale_targets"], 1)]
        assert sorted(_segments(batch)) == sorted(expected)
        assert batch["encoder_input_tokens"].shape[1] in (12, 16) and batch["decoder_target_tokens"].shape[1] in (6, 8)


def test_bucketed_rows_are_a_multiple_of_the_data_axis():
    for batch in _take(input_pipeline.train_batches(_bucketed(), row_multiple=3)[0], 4):
        assert batch["encoder_input_tokens"].shape[0] % 3 == 0


def test_a_bucketed_mixture_step_holds_batch_size_sequences_with_their_task_ids():
    cfg = _bucketed("trainer_test_mix", rationale_tasks=("trainer_test_rationale",), batch_size=8, shuffle=True, seed=3)
    batch = _take(input_pipeline.train_batches(cfg)[0], 1)[0]
    sequences = _segments(batch)
    assert len(sequences) == 8
    for inputs, _, task_id in sequences:
        assert inputs[0] == (3 if task_id == 0 else 4)  # label inputs start with 3, rationale inputs with 4


def test_a_bucketed_single_task_step_holds_batch_size_label_sequences_in_order():
    batch = _take(input_pipeline.train_batches(_bucketed("trainer_test_label", batch_size=5))[0], 1)[0]
    expected = [(support.synthetic_example(i)["label_inputs"], support.synthetic_example(i)["label_targets"], 0)
                for i in range(5)]
    assert sorted(_segments(batch)) == sorted(expected)


def test_bucketed_restart_at_batch_n_continues_the_same_stream():
    cfg = _bucketed("trainer_test_mix", rationale_tasks=("trainer_test_rationale",), batch_size=6, shuffle=True, seed=7)
    full = _take(input_pipeline.train_batches(cfg)[0], 9)
    resumed = _take(input_pipeline.train_batches(cfg, start_batch=5)[0], 4)
    for a, b in zip(full[5:], resumed):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])


def test_two_hosts_bucketed_slices_put_together_are_the_one_host_batch():
    import seqio

    one = _take(input_pipeline.train_batches(_bucketed(), row_multiple=2)[0], 3)
    hosts = [_take(input_pipeline.train_batches(_bucketed(), shard_info=seqio.ShardInfo(i, 2), num_hosts=2)[0], 3)
             for i in range(2)]
    for step, batch in enumerate(one):
        for name in batch:
            np.testing.assert_array_equal(np.concatenate([hosts[0][step][name], hosts[1][step][name]]), batch[name])


def test_bucketed_position_records_the_row_lengths_and_refuses_other_ones():
    position = _bucketed().position(3)
    assert position["pack"] == "buckets" and position["row_lens"] == [[12, 16], [6, 8]]
    with pytest.raises(ValueError, match="row_lens"):
        _bucketed(decoder_row_lens=(8,)).check_position(position)
    with pytest.raises(ValueError, match="pack"):
        input_pipeline.StreamConfig("trainer_test_paired", {"inputs": 16, "targets": 8}, batch_size=4,
                                    pack=True).check_position(position)


def test_row_lengths_shorter_than_the_sequence_length_are_a_config_error():
    from dss_jax import experiment

    with pytest.raises(experiment.ConfigError, match=r"InputConfig.encoder_row_lens.*sequence_lengths\['inputs'\]"):
        experiment.InputConfig(sequence_lengths={"inputs": 16, "targets": 8}, pack="buckets", encoder_row_lens=[8, 12])


def test_row_lengths_without_bucketed_packing_are_a_config_error():
    from dss_jax import experiment

    with pytest.raises(experiment.ConfigError, match="InputConfig.decoder_row_lens.*pack = 'buckets'"):
        experiment.InputConfig(sequence_lengths={"inputs": 16, "targets": 8}, pack=True, decoder_row_lens=[8])
