"""A SentencePiece model file with T5's sentinel pieces appended, for the vocabulary and T5X tests."""
import pathlib


def add_sentinels(base: pathlib.Path, out: pathlib.Path, count: int = 100) -> pathlib.Path:
    """`base` plus `<extra_id_{count-1}>`..`<extra_id_0>` pieces: the layout of cc_all.32000.100extra."""
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto.FromString(base.read_bytes())
    for i in reversed(range(count)):
        piece = model.pieces.add()
        piece.piece = f"<extra_id_{i}>"
        piece.score = 0.0
        piece.type = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    out.write_bytes(model.SerializeToString())
    return out
