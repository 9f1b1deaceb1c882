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
