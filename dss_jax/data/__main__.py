"""Command line of dss_jax.data.

  python -m dss_jax.data stats --benchmark cqa --data_dir DIR [--json] [--lenient] [--llm gpt]
  python -m dss_jax.data fetch --yes [--sha256 HEX] [--cache_dir DIR]
  python -m dss_jax.data train_vocab --input a.txt [b.txt ...] --output x.model --vocab_size N
  python -m dss_jax.data train_vocab --embedded      # the embedded benchmark's vocabulary
  python -m dss_jax.data write_embedded --data_dir DIR   # arith/ in the datasets.zip layout
  python -m dss_jax.data asdiv --xml ASDiv.xml --data_dir DIR [--split asdiv] [--layout svamp]
  python -m dss_jax.data validate --benchmark cqa [--data_dir DIR] [--llm gpt] [--extra_source svamp:asdiv]
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import List, Optional


def _stats(args) -> int:
    from dss_jax.data import embedded, readers, stats

    data_dir = args.data_dir
    if data_dir is None and args.benchmark == embedded.BENCHMARK:
        data_dir = str(embedded.ensure_data_dir())  # the tasks' copy of the embedded benchmark
    try:
        result = stats.benchmark_stats(args.benchmark, data_dir, args.fraction, args.seed, not args.lenient, args.llm)
    except (readers.DataFileMissingError, readers.TeacherOutputCountError, readers.BadRowError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=1, sort_keys=True))
    else:
        print(stats.format_table(args.benchmark, result))
    return 0


def _fetch(args) -> int:
    from dss_jax.data import fetch

    if not args.yes:
        print(
            f"would download {fetch.DATASETS_ZIP_URL} into {fetch.cache_dir(args.cache_dir)}; "
            "pass --yes to do it",
            file=sys.stderr,
        )
        return 1
    data_dir = fetch.fetch_datasets(args.sha256, args.cache_dir)
    print(f"datasets unpacked to {data_dir}; use DSS_DATA_DIR={data_dir}")
    return 0


def _train_vocab(args) -> int:
    from dss_jax.data import vocab

    if args.embedded:
        print(vocab.embedded_vocab_path(args.cache_dir))
        return 0
    if not args.input or not args.output:
        print("error: --input and --output are required (or pass --embedded)", file=sys.stderr)
        return 2
    lines: List[str] = []
    for path in args.input:
        try:
            lines.extend(pathlib.Path(path).read_text(encoding="utf-8").splitlines())
        except FileNotFoundError:
            print(f"error: --input file {path} does not exist", file=sys.stderr)
            return 2
        except UnicodeDecodeError as err:
            print(f"error: --input file {path} is not UTF-8 text ({err.reason} at byte {err.start})", file=sys.stderr)
            return 2
    print(vocab.train_sentencepiece(lines, args.output, args.vocab_size, args.model_type, args.split_digits))
    return 0


def _write_embedded(args) -> int:
    from dss_jax.data import embedded

    config = embedded.ArithConfig(seed=args.seed, teacher_error_rate=args.teacher_error_rate)
    print(embedded.write_benchmark(args.data_dir, config) / embedded.BENCHMARK)
    return 0


def _asdiv(args) -> int:
    from dss_jax.data import asdiv, readers

    try:
        path = asdiv.write_rows(args.xml, args.data_dir, args.split, args.layout)
    except (readers.DataFileMissingError, readers.BadRowError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    benchmark = args.layout
    print(f"{path}\nannotate it: python -m dss_jax.teacher --benchmark {benchmark} --split {args.split} "
          f"--data_dir {args.data_dir} --out_dir {args.data_dir} ...\n"
          f"then train with the extra source {benchmark}:{args.split}")
    return 0


def _validate(args) -> int:
    from dss_jax.data import embedded, readers

    data_dir = args.data_dir
    if data_dir is None and args.benchmark == embedded.BENCHMARK:
        data_dir = str(embedded.ensure_data_dir())
    try:
        checks = readers.validate_benchmark(
            args.benchmark, data_dir, args.splits, args.fraction, args.seed, llm=args.llm,
            extra_sources=args.extra_source, bad_labels="skip" if args.skip_bad_labels else "error")
    except (readers.DataValidationError, readers.DataFileMissingError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({split: vars(check) for split, check in checks.items()}, indent=1, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dss_jax.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    stats = commands.add_parser("stats", help="rows, teacher outputs, parse failures, teacher accuracy per split")
    stats.add_argument("--benchmark", required=True, choices=["cqa", "esnli", "anli1", "svamp", "arith"])
    stats.add_argument("--data_dir", default=None,
                       help="datasets.zip layout folder (default $DSS_DATA_DIR; for arith the cached embedded copy)")
    stats.add_argument("--json", action="store_true", help="one JSON object keyed by split")
    stats.add_argument("--fraction", type=float, default=1.0, help="training fraction (seeded subsample)")
    stats.add_argument("--seed", type=int, default=0, help="seed of the training subsample")
    stats.add_argument("--lenient", action="store_true",
                       help="count teacher-output/row count mismatches instead of failing")
    stats.add_argument("--llm", default="palm", choices=["palm", "gpt"],
                       help="teacher outputs: palm (llm/ files) or gpt (gpt-neox/ files, GPT-NeoX rules)")
    stats.set_defaults(run=_stats)

    fetch = commands.add_parser("fetch", help="download the paper's datasets.zip into the cache")
    fetch.add_argument("--yes", action="store_true", help="really download")
    fetch.add_argument("--sha256", default=None, help="expected sha256 of datasets.zip")
    fetch.add_argument("--cache_dir", default=None, help="default $DSS_CACHE_DIR or ~/.cache/dss_jax")
    fetch.set_defaults(run=_fetch)

    train_vocab = commands.add_parser("train_vocab", help="train a T5-style SentencePiece model")
    train_vocab.add_argument("--input", nargs="*", help="text files, one sentence a line")
    train_vocab.add_argument("--output", help="path of the .model file to write")
    train_vocab.add_argument("--vocab_size", type=int, default=8000)
    train_vocab.add_argument("--model_type", default="unigram", choices=["unigram", "bpe"])
    train_vocab.add_argument("--split_digits", action="store_true", help="one piece per digit")
    train_vocab.add_argument("--embedded", action="store_true",
                             help="train (or find) the embedded benchmark's vocabulary and print its path")
    train_vocab.add_argument("--cache_dir", default=None)
    train_vocab.set_defaults(run=_train_vocab)

    write = commands.add_parser("write_embedded", help="write the arith benchmark in the datasets.zip layout")
    write.add_argument("--data_dir", required=True)
    write.add_argument("--seed", type=int, default=0)
    write.add_argument("--teacher_error_rate", type=float, default=0.1)
    write.set_defaults(run=_write_embedded)

    asdiv = commands.add_parser("asdiv", help="ASDiv.xml -> training rows for the teacher step (augmentation)")
    asdiv.add_argument("--xml", required=True, help="ASDiv.xml (github.com/chaochun/nlu-asdiv-dataset)")
    asdiv.add_argument("--data_dir", required=True, help="datasets.zip layout folder to write the rows into")
    asdiv.add_argument("--split", default="asdiv", help="file split name of the rows (letters and digits)")
    asdiv.add_argument("--layout", default="svamp", choices=["svamp", "asdiv"],
                       help="svamp: svamp/svamp_<split>.json rows; asdiv: the reference's asdiv/asdiv_<split>.json")
    asdiv.set_defaults(run=_asdiv)

    validate = commands.add_parser("validate", help="read every split a run uses; one clear error if any is bad")
    validate.add_argument("--benchmark", required=True, choices=["cqa", "esnli", "anli1", "svamp", "arith"])
    validate.add_argument("--data_dir", default=None, help="default $DSS_DATA_DIR (arith: the cached copy)")
    validate.add_argument("--splits", nargs="+", default=["train", "validation", "test"])
    validate.add_argument("--fraction", type=float, default=1.0)
    validate.add_argument("--seed", type=int, default=0)
    validate.add_argument("--llm", default="palm", choices=["palm", "gpt"])
    validate.add_argument("--extra_source", action="append", default=[], help="benchmark:split[:llm] (repeatable)")
    validate.add_argument("--skip_bad_labels", action="store_true",
                          help="count rows whose gold label is outside the label set instead of failing")
    validate.set_defaults(run=_validate)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
