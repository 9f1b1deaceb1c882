"""Data for distilling step-by-step: readers of the `datasets.zip` layout, teacher-output
parsers, metrics, vocabularies and the embedded offline benchmark.

`python -m dss_jax.data {stats,fetch,train_vocab,write_embedded}` is the command line.
"""
from dss_jax.data.parsing import ParsedTeacher, parse_teacher_output
from dss_jax.data.readers import (
    BENCHMARKS,
    DataFileMissingError,
    Example,
    SplitData,
    TeacherOutputCountError,
    load_split,
    resolve_data_dir,
)

__all__ = [
    "BENCHMARKS",
    "DataFileMissingError",
    "Example",
    "ParsedTeacher",
    "SplitData",
    "TeacherOutputCountError",
    "load_split",
    "parse_teacher_output",
    "resolve_data_dir",
]
