"""Pack (input, target) token sequences into a few fixed-shape rows, in numpy.

The project's one host-side packer: the trainer's ``InputConfig.pack = "buckets"``
(``dss_jax.input_pipeline``) and the CPU benchmark protocol use it when the *set* of
sequences in a step is fixed (a step holds exactly the label and rationale sequences of
its examples; the protocol: 8 examples = 16 sequences a step) and we want little padding
with few distinct shapes (each new shape is one more XLA compilation). SeqIO's TF packing
(``pack=True``) instead fills rows from the stream, so a step's examples are not fixed.

Sequences are placed first-fit-decreasing by input length into rows whose encoder part
holds `encoder_row_len` tokens and decoder part `decoder_row_len` tokens; the number of
rows is the smallest that fits, rounded up to a multiple of `row_multiple`. Both row
lengths come from short bucket lists (the pair with the least padding wins), so a stream
of steps compiles a handful of programs.
The output is SeqIO's packed encoder-decoder layout (segment ids from 1, positions from 0
within each segment, decoder inputs shifted right per segment with start id 0) plus
`task_ids` per target token.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np


def _first_fit_decreasing(pairs: Sequence[tuple[int, int]], rows: int, enc_cap: int, dec_cap: int):
    """Row index per pair, or None if the pairs do not fit in `rows` rows."""
    order = sorted(range(len(pairs)), key=lambda i: (-pairs[i][0], -pairs[i][1]))
    enc_free = [enc_cap] * rows
    dec_free = [dec_cap] * rows
    placement = [0] * len(pairs)
    for i in order:
        e, d = pairs[i]
        for r in range(rows):
            if enc_free[r] >= e and dec_free[r] >= d:
                enc_free[r] -= e
                dec_free[r] -= d
                placement[i] = r
                break
        else:
            return None
    return placement


class RowPlan(NamedTuple):
    """Where each sequence goes: `placement[i]` is the row of pair i."""

    rows: int
    encoder_row_len: int
    decoder_row_len: int
    placement: list[int]


def _lengths(lengths: int | Sequence[int], name: str) -> list[int]:
    lengths = [lengths] if isinstance(lengths, int) else sorted(set(lengths))
    if not lengths or min(lengths) < 1:
        raise ValueError(f"{name} must be positive lengths, got {lengths}")
    return lengths


def plan_rows(pairs: Sequence[tuple[int, int]], encoder_row_lens: int | Sequence[int],
              decoder_row_lens: int | Sequence[int], row_multiple: int = 1) -> RowPlan:
    """The row shape (count, encoder length, decoder length) with the fewest padded tokens,
    weighing a decoder token twice (it also pays the output layer), that fits every pair."""
    if not pairs:
        raise ValueError("nothing to pack")
    encoder_row_lens = _lengths(encoder_row_lens, "encoder_row_lens")
    decoder_row_lens = _lengths(decoder_row_lens, "decoder_row_lens")
    longest_enc, longest_dec = max(e for e, _ in pairs), max(d for _, d in pairs)
    if longest_enc > encoder_row_lens[-1]:
        raise ValueError(f"an input of {longest_enc} tokens does not fit rows of {encoder_row_lens[-1]}")
    if longest_dec > decoder_row_lens[-1]:
        raise ValueError(f"a target of {longest_dec} tokens is longer than every decoder row length "
                         f"{decoder_row_lens}")
    enc_total, dec_total = sum(e for e, _ in pairs), sum(d for _, d in pairs)
    best = None
    for enc_len in encoder_row_lens:
        if longest_enc > enc_len:
            continue
        for dec_len in decoder_row_lens:
            if longest_dec > dec_len:
                continue
            rows = max(-(-enc_total // enc_len), -(-dec_total // dec_len), 1)
            rows = -(-rows // row_multiple) * row_multiple
            while rows <= len(pairs) + row_multiple:  # a row per pair always fits
                placement = _first_fit_decreasing(pairs, rows, enc_len, dec_len)
                if placement is not None:
                    cost = rows * (enc_len + 2 * dec_len)
                    if best is None or cost < best[0]:
                        best = (cost, RowPlan(rows, enc_len, dec_len, placement))
                    break
                rows += row_multiple
    return best[1]


def pack(inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], task_ids: Sequence[int],
         encoder_row_lens: int | Sequence[int], decoder_row_lens: int | Sequence[int],
         row_multiple: int = 1) -> dict[str, np.ndarray]:
    """Packed encoder-decoder features for the given sequences (EOS already appended), in
    the row shape `plan_rows` picks from the given lengths."""
    if not (len(inputs) == len(targets) == len(task_ids)):
        raise ValueError("inputs, targets and task_ids must have the same length")
    pairs = [(len(x), len(y)) for x, y in zip(inputs, targets)]
    if min(min(p) for p in pairs) < 1:
        raise ValueError("empty input or target sequence")
    rows, encoder_row_len, dec_len, placement = plan_rows(pairs, encoder_row_lens, decoder_row_lens, row_multiple)
    out = {
        "encoder_input_tokens": np.zeros((rows, encoder_row_len), np.int32),
        "encoder_segment_ids": np.zeros((rows, encoder_row_len), np.int32),
        "encoder_positions": np.zeros((rows, encoder_row_len), np.int32),
        "decoder_target_tokens": np.zeros((rows, dec_len), np.int32),
        "decoder_input_tokens": np.zeros((rows, dec_len), np.int32),
        "decoder_segment_ids": np.zeros((rows, dec_len), np.int32),
        "decoder_positions": np.zeros((rows, dec_len), np.int32),
        "decoder_loss_weights": np.zeros((rows, dec_len), np.float32),
        "task_ids": np.zeros((rows, dec_len), np.int32),
    }
    enc_fill = [0] * rows
    dec_fill = [0] * rows
    segment = [0] * rows
    for i in sorted(range(len(pairs)), key=lambda i: placement[i]):
        r = placement[i]
        segment[r] += 1
        x, y = np.asarray(inputs[i], np.int32), np.asarray(targets[i], np.int32)
        e0, d0 = enc_fill[r], dec_fill[r]
        out["encoder_input_tokens"][r, e0:e0 + len(x)] = x
        out["encoder_segment_ids"][r, e0:e0 + len(x)] = segment[r]
        out["encoder_positions"][r, e0:e0 + len(x)] = np.arange(len(x))
        out["decoder_target_tokens"][r, d0:d0 + len(y)] = y
        out["decoder_input_tokens"][r, d0 + 1:d0 + len(y)] = y[:-1]  # start id 0 at d0
        out["decoder_segment_ids"][r, d0:d0 + len(y)] = segment[r]
        out["decoder_positions"][r, d0:d0 + len(y)] = np.arange(len(y))
        out["decoder_loss_weights"][r, d0:d0 + len(y)] = 1.0
        out["task_ids"][r, d0:d0 + len(y)] = task_ids[i]
        enc_fill[r] += len(x)
        dec_fill[r] += len(y)
    return out
