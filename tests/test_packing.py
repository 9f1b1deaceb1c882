"""Host-side packing of (input, target) sequences into a few fixed-shape rows
(`dss_jax.packing`): the row shape it picks and the SeqIO packed layout it writes."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dss_jax import packing


def _sequences(lengths, first_id=2):
    """Distinct token ids per sequence, EOS (1) last."""
    out, next_id = [], first_id
    for n in lengths:
        out.append(list(range(next_id, next_id + n - 1)) + [1])
        next_id += n - 1
    return out


def test_the_row_shape_with_the_least_padding_is_chosen_among_both_length_lists():
    pairs = [(100, 30), (100, 30), (100, 30), (100, 30)]
    plan = packing.plan_rows(pairs, (200, 256), (32, 64, 96))
    assert (plan.rows, plan.encoder_row_len, plan.decoder_row_len) == (2, 200, 64)


def test_a_single_length_may_be_given_as_an_int():
    plan = packing.plan_rows([(10, 3), (20, 5)], 32, 8)
    assert (plan.rows, plan.encoder_row_len, plan.decoder_row_len) == (1, 32, 8)


def test_rows_are_rounded_up_to_a_multiple():
    assert packing.plan_rows([(10, 3)] * 3, 16, 4, row_multiple=4).rows == 4


def test_sequences_longer_than_every_row_are_rejected_with_their_length():
    with pytest.raises(ValueError, match="input of 300 tokens"):
        packing.plan_rows([(300, 3)], (224, 256), (64,))
    with pytest.raises(ValueError, match="target of 70 tokens"):
        packing.plan_rows([(30, 70)], 256, (32, 64))


def test_empty_input_and_bad_lengths_are_rejected():
    with pytest.raises(ValueError, match="nothing to pack"):
        packing.plan_rows([], 256, 64)
    with pytest.raises(ValueError, match="decoder_row_lens"):
        packing.plan_rows([(3, 3)], 256, [0])


def test_packed_rows_hold_every_sequence_once_in_seqio_layout():
    inputs = _sequences([5, 7, 3, 6])
    targets = _sequences([2, 4, 3, 2], first_id=100)
    out = packing.pack(inputs, targets, [0, 1, 0, 1], (8, 16), (4, 8))
    rows, enc_len = out["encoder_input_tokens"].shape
    found_inputs, found_targets = [], []
    for r in range(rows):
        for segment in range(1, out["encoder_segment_ids"][r].max() + 1):
            enc = out["encoder_segment_ids"][r] == segment
            dec = out["decoder_segment_ids"][r] == segment
            found_inputs.append(out["encoder_input_tokens"][r][enc].tolist())
            target = out["decoder_target_tokens"][r][dec]
            found_targets.append(target.tolist())
            np.testing.assert_array_equal(out["encoder_positions"][r][enc], np.arange(enc.sum()))
            np.testing.assert_array_equal(out["decoder_positions"][r][dec], np.arange(dec.sum()))
            # decoder inputs: start id 0, then the target shifted right within the segment
            np.testing.assert_array_equal(out["decoder_input_tokens"][r][dec], np.concatenate([[0], target[:-1]]))
    assert sorted(found_inputs) == sorted(inputs) and sorted(found_targets) == sorted(targets)
    assert out["decoder_loss_weights"].sum() == sum(map(len, targets))
    assert (out["task_ids"] * out["decoder_loss_weights"]).sum() == len(targets[1]) + len(targets[3])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 60), st.integers(1, 30)), min_size=1, max_size=16))
def test_every_plan_fits_its_rows(pairs):
    plan = packing.plan_rows(pairs, (64, 96), (32, 48))
    enc_fill, dec_fill = [0] * plan.rows, [0] * plan.rows
    for (e, d), r in zip(pairs, plan.placement):
        enc_fill[r] += e
        dec_fill[r] += d
    assert max(enc_fill) <= plan.encoder_row_len and max(dec_fill) <= plan.decoder_row_len
    assert plan.rows <= len(pairs)
