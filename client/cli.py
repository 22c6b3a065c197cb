"""The ``preimage`` command line, built only on :class:`preimage.client.Client`.

``preimage serve`` hands every argument to ``preimage.server.cli.main`` (the
server extra); every other command is a client call. A failed call prints the
server's message on stderr and exits with a status per error class (see
:data:`EXIT_CODES` and docs/cli.md). Ctrl-C during ``invert`` or ``train``
cancels the stream on the server and exits with 130.

Example:
    $ preimage register examples/difficulty/difficulty.onnx --name difficulty
    difficulty:1
    $ preimage invert difficulty --target 7 -n 5 --seed 1 --jsonl
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from preimage.client import _format, _writers
from preimage.client.errors import (
    CancelledError,
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    ModelNotFoundError,
    PermissionDeniedError,
    PreimageError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)
from preimage.client.sync import Client, InvertStream, TrainRun
from preimage.client.types import FeatureValue, TrainProgress, TrainResult, TrainWarning

__all__ = ["EXIT_CODES", "build_parser", "main"]

DEFAULT_SERVER = "127.0.0.1:50051"
EXIT_INTERRUPTED = 130

EXIT_CODES: dict[str, int] = {
    "ok": 0,
    "other error": PreimageError.exit_code,
    "usage": 2,
    "not found": ModelNotFoundError.exit_code,
    "invalid argument": InvalidArgumentError.exit_code,
    "resource exhausted": ResourceExhaustedError.exit_code,
    "unauthenticated / permission denied": UnauthenticatedError.exit_code,
    "deadline exceeded": DeadlineExceededError.exit_code,
    "unavailable": UnavailableError.exit_code,
    "unimplemented": UnimplementedError.exit_code,
    "internal": InternalError.exit_code,
    "interrupted (Ctrl-C) or cancelled": EXIT_INTERRUPTED,
}
"""Exit status of ``preimage`` per outcome."""

assert PermissionDeniedError.exit_code == UnauthenticatedError.exit_code
assert CancelledError.exit_code == EXIT_INTERRUPTED


class UsageError(InvalidArgumentError):
    """A malformed command-line value, found before any call is made."""


# -- argument value parsers ---------------------------------------------------------------


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what}: expected comma-separated numbers, got {text!r}") from None


def _range(text: str, what: str) -> tuple[float, float]:
    lo, sep, hi = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return float(lo), float(hi)
    except ValueError:
        raise UsageError(f"{what}: expected LO:HI, got {text!r}") from None


def _bounds(items: Sequence[str] | None) -> dict[str, tuple[float, float]] | None:
    """``--bounds LO:HI`` (every feature) and ``--bounds NAME=LO:HI``, in one mapping (``""`` = every)."""
    if not items:
        return None
    out: dict[str, tuple[float, float]] = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        out[name if sep else ""] = _range(value, f"--bounds {item}")
    # The unnamed bound goes first: named ones refine it.
    return dict(sorted(out.items(), key=lambda kv: kv[0] != ""))


def _fixed(items: Sequence[str] | None) -> dict[str, FeatureValue] | None:
    if not items:
        return None
    out: dict[str, FeatureValue] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--fix: expected NAME=VALUE, got {item!r}")
        try:
            out[name] = float(value)
        except ValueError:
            out[name] = value  # a categorical level
    return out


def _names(items: Sequence[str] | None) -> list[str]:
    """Repeatable, comma-separated name lists: ``--categorical a,b --categorical c``."""
    return [name.strip() for item in items or () for name in item.split(",") if name.strip()]


# -- commands ------------------------------------------------------------------------------


def _print(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def cmd_register(client: Client, args: argparse.Namespace) -> int:
    bounds = _range(args.bounds, "--bounds") if args.bounds else None
    info = client.register(args.file, args.name, args.schema, bounds=bounds)
    _print(info.ref)
    return 0


def cmd_models(client: Client, args: argparse.Namespace) -> int:
    models = client.models(args.name, all_versions=args.all)
    if args.json:
        _print(json.dumps([m.to_dict() for m in models], indent=2))
    elif models:
        _print(_format.models_table(models))
    else:
        _err("no models registered")
    return 0


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    info = client.model(args.ref)
    _print(json.dumps(info.to_dict(), indent=2) if args.json else _format.describe_model(info))
    return 0


def cmd_delete(client: Client, args: argparse.Namespace) -> int:
    # NAME:V and NAME@ALIAS name one version; a bare NAME means all of them.
    bare = ":" not in args.ref and "@" not in args.ref
    for info in client.delete(args.ref, all_versions=bare):
        _print(f"deleted {info.ref}")
    return 0


def _name_alias(text: str) -> tuple[str, str]:
    name, sep, alias = text.partition("@")
    if not sep or not name or not alias:
        raise UsageError(f"expected NAME@ALIAS, got {text!r}")
    return name, alias


def cmd_alias(client: Client, args: argparse.Namespace) -> int:
    name, alias = _name_alias(args.alias)
    info = client.alias(name, alias, args.version)
    _print(f"{name}@{alias} -> {info.ref}")
    return 0


def cmd_unalias(client: Client, args: argparse.Namespace) -> int:
    name, alias = _name_alias(args.alias)
    client.unalias(name, alias)
    _print(f"removed {name}@{alias}")
    return 0


def _jsonl_rows(path: str) -> Iterator[tuple[int, Any]]:
    handle = sys.stdin if path == "-" else open(path)
    try:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except ValueError as exc:
                raise UsageError(f"{path} line {number}: not JSON ({exc})") from None
    finally:
        if handle is not sys.stdin:
            handle.close()


def _read_rows(path: str) -> list[Any]:
    rows = []
    kinds = set()
    for number, row in _jsonl_rows(path):
        if not isinstance(row, (list, dict)):
            raise UsageError(f"{path} line {number}: expected a JSON array or object, got {row!r}")
        kinds.add(type(row))
        rows.append(row)
    if len(kinds) > 1:
        raise UsageError(f"{path}: lines mix arrays and objects; use one form")
    if not rows:
        raise UsageError(f"{path}: no rows")
    return rows


def cmd_predict(client: Client, args: argparse.Namespace) -> int:
    rows: Any = [_floats(text, "--input") for text in args.input] if args.input else _read_rows(args.file)
    outputs = client.predict(args.ref, rows)
    sys.stdout.write(_writers.prediction_lines(outputs, jsonl=args.jsonl))
    return 0


def _invert_stream(client: Client, args: argparse.Namespace, named: bool) -> InvertStream:
    targets = [v for text in args.target or () for v in _floats(text, "--target")]
    ranges = [_range(text, "--target-range") for text in args.target_range or ()]
    if bool(targets) == bool(ranges):
        raise UsageError("give --target (one per output) or --target-range LO:HI (one per output)")
    return client.invert(
        args.ref,
        target=targets or None,
        target_range=ranges or None,
        n=args.n,
        tolerance=args.tolerance,
        seed=args.seed,
        bounds=_bounds(args.bounds),
        fixed=_fixed(args.fix),
        mode=args.mode,
        prior=args.prior,
        min_distance=args.min_distance,
        in_distribution_weight=args.in_distribution_weight,
        max_seconds=args.max_seconds,
        max_passes=args.max_passes,
        max_uncertainty=args.max_uncertainty,
        named=named,
    )


_WRITERS: dict[str, type[_writers.PatternWriter]] = {
    "table": _writers.TableWriter,
    "jsonl": _writers.JsonlWriter,
    "csv": _writers.CsvWriter,
    "npy": _writers.NpyWriter,
}


def _invert_format(args: argparse.Namespace) -> str:
    """The output format from ``--format`` and its alias ``--jsonl``; refuses binary on a terminal."""
    fmt: str = args.format or ("jsonl" if args.jsonl else "table")
    if args.jsonl and fmt != "jsonl":
        raise UsageError(f"--jsonl is --format jsonl; it contradicts --format {fmt}")
    if args.names and fmt not in ("jsonl", "csv"):
        raise UsageError(f"--names applies to --format jsonl and csv, not {fmt}")
    to_stdout = args.output in (None, "-")
    if fmt == "npy" and (args.output is None or (to_stdout and sys.stdout.isatty())):
        raise UsageError("--format npy writes a binary .npy file: give --output FILE.npy (or -o - into a pipe)")
    return fmt


def _open_output(path: str | None, binary: bool) -> IO[Any]:
    if path in (None, "-"):
        return sys.stdout.buffer if binary else sys.stdout
    return open(path, "wb") if binary else open(path, "w", encoding="utf-8", newline="\n")


def cmd_invert(client: Client, args: argparse.Namespace) -> int:
    fmt = _invert_format(args)
    # The table and CSV name their columns; JSON lines and .npy carry raw columns unless --names.
    stream = _invert_stream(client, args, named=args.names or fmt in ("table", "csv"))
    out = _open_output(args.output, binary=fmt == "npy")
    writer: _writers.PatternWriter | None = None
    try:
        with stream:
            try:
                for batch in stream.batches():
                    if writer is None:
                        writer = _WRITERS[fmt](out, stream.schema, named=args.names)
                    writer.write(batch)
                schema = stream.schema
                if writer is None:
                    writer = _WRITERS[fmt](out, schema, named=args.names)
                writer.close((schema.input_width, len(schema.outputs)) if schema is not None else None)
            except KeyboardInterrupt:
                stream.cancel()
                _err("cancelled")
                return EXIT_INTERRUPTED
    finally:
        if out not in (sys.stdout, sys.stdout.buffer):
            out.close()
    summary = stream.summary
    if summary is not None:
        # Only the human table on the terminal keeps its summary beside it; data outputs stay pure.
        show = _print if fmt == "table" and args.output in (None, "-") else _err
        for line in _format.summary_lines(summary):
            show(line)
    return 0


def cmd_train(client: Client, args: argparse.Namespace) -> int:
    targets = _names(args.target)
    if not targets:
        raise UsageError("--target: name at least one target column")
    run: TrainRun = client.train(
        args.data,
        name=args.name,
        target=targets,
        features=_names(args.features) or None,
        categorical=_names(args.categorical) or None,
        hidden=[int(v) for v in _floats(args.hidden, "--hidden")] if args.hidden else None,
        activation=args.activation,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        validation_fraction=args.validation_fraction,
        patience=args.patience,
        seed=args.seed,
        time_budget=args.time_budget,
        ensemble=args.ensemble,
    )
    bar = _format.ProgressBar(sys.stderr)
    with run:
        try:
            for event in run:
                if args.jsonl:
                    _print(_format.json_line(event.to_dict()))
                    sys.stdout.flush()
                elif isinstance(event, TrainProgress):
                    bar.update(event)
                elif isinstance(event, TrainWarning):
                    where = f" (column {event.column})" if event.column else ""
                    bar.message(f"warning{where}: {event.message}")
                elif isinstance(event, TrainResult):
                    bar.close()
                    for line in _format.train_result_lines(event):
                        _print(line)
        except KeyboardInterrupt:
            run.cancel()
            bar.close()
            _err("cancelled: nothing was registered")
            return EXIT_INTERRUPTED
        finally:
            bar.close()
    return 0


def cmd_health(client: Client, args: argparse.Namespace) -> int:
    if args.wait is not None:
        client.wait_ready(args.wait)
    status = client.health()
    _print(status)
    return 0 if status == "SERVING" else 1


# -- parser ---------------------------------------------------------------------------------


def _connection_options(parser: argparse.ArgumentParser, *, with_defaults: bool) -> None:
    """Add --server, --token, --tls-* and --timeout; on subcommands they only override when given."""

    def default(value: object) -> object:
        return value if with_defaults else argparse.SUPPRESS

    parser.add_argument(
        "--server",
        default=default(os.environ.get("PREIMAGE_SERVER", DEFAULT_SERVER)),
        help=f"HOST:PORT of the server (env PREIMAGE_SERVER, default {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--token", default=default(os.environ.get("PREIMAGE_TOKEN")), help="bearer token (env PREIMAGE_TOKEN)"
    )
    parser.add_argument("--tls-ca", default=default(None), help="PEM CA bundle: connect with TLS, trusting it")
    parser.add_argument("--tls-cert", default=default(None), help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", default=default(None), help="PEM client key (mutual TLS)")
    parser.add_argument("--timeout", type=float, default=default(None), help="deadline of each call in seconds")


def build_parser() -> argparse.ArgumentParser:
    """The ``preimage`` argument parser (``serve`` is handed over before parsing)."""
    parser = argparse.ArgumentParser(
        prog="preimage",
        description="preimage: which inputs make a model output y? Client commands for a preimage server.",
        epilog="preimage serve --help shows the server's options. Exit statuses: see docs/cli.md.",
    )
    _connection_options(parser, with_defaults=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("serve", help="run the server (needs the server extra); every argument goes to it", add_help=False)

    p = sub.add_parser("register", help="register an ONNX model; prints NAME:VERSION")
    p.add_argument("file", help="the .onnx file")
    p.add_argument("--name", required=True, help="model name, [a-z0-9][a-z0-9._-]{0,63}")
    p.add_argument("--bounds", metavar="LO:HI", help="bounds for every feature the schema leaves unbounded")
    p.add_argument("--schema", metavar="FILE.json", help="feature schema (default: the model's embedded one)")
    p.set_defaults(run=cmd_register)

    p = sub.add_parser("models", help="list models")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--all", action="store_true", help="every version, not only the latest of each name")
    p.add_argument("--name", help="only this model name")
    p.set_defaults(run=cmd_models)

    p = sub.add_parser("show", help="describe one model version and its schema")
    p.add_argument("ref", help="NAME, NAME:VERSION or NAME@ALIAS")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=cmd_show)

    p = sub.add_parser("delete", help="delete NAME:VERSION or NAME@ALIAS, or every version of a bare NAME")
    p.add_argument("ref")
    p.set_defaults(run=cmd_delete)

    p = sub.add_parser("alias", help="point NAME@ALIAS at a version")
    p.add_argument("alias", metavar="NAME@ALIAS")
    p.add_argument("version", type=int)
    p.set_defaults(run=cmd_alias)

    p = sub.add_parser("unalias", help="remove NAME@ALIAS")
    p.add_argument("alias", metavar="NAME@ALIAS")
    p.set_defaults(run=cmd_unalias)

    p = sub.add_parser("predict", help="evaluate a model on rows; prints one line of outputs per row")
    p.add_argument("ref")
    rows = p.add_mutually_exclusive_group(required=True)
    rows.add_argument("--input", action="append", metavar="V1,V2,...", help="one row of raw columns (repeatable)")
    rows.add_argument(
        "--file",
        metavar="ROWS.jsonl",
        help="one JSON array (raw columns) or object (by feature name) per line; - reads stdin",
    )
    p.add_argument("--jsonl", action="store_true", help="print each row's outputs as a JSON array")
    p.set_defaults(run=cmd_predict)

    p = sub.add_parser("invert", help="stream input patterns whose outputs hit a target")
    p.add_argument("ref")
    p.add_argument("--target", action="append", metavar="Y", help="target value, one per output (repeat or Y1,Y2)")
    p.add_argument("--target-range", action="append", metavar="LO:HI", help="target interval, one per output")
    p.add_argument("-n", type=int, default=10, help="number of patterns (default 10)")
    p.add_argument("--tolerance", type=float, help="allowed |f(x) - y| (server default 1e-3)")
    p.add_argument("--seed", type=int, help="random seed (same seed, same stream)")
    p.add_argument(
        "--bounds",
        action="append",
        metavar="[NAME=]LO:HI",
        help="bounds for every feature, or one feature by name (repeatable; write --bounds=-1:1 for negatives)",
    )
    p.add_argument("--fix", action="append", metavar="NAME=VALUE", help="hold a feature at a value or level")
    p.add_argument("--mode", choices=["optimize", "sample"], help="search mode (server default: sample)")
    p.add_argument("--prior", choices=["uniform", "data"], help="prior of random patterns")
    p.add_argument("--min-distance", type=float, default=0.0, help="minimum distance between patterns")
    p.add_argument("--in-distribution-weight", type=float, default=0.0, help="keep patterns near the training data")
    p.add_argument("--max-seconds", type=float, help="time budget")
    p.add_argument("--max-passes", type=int, help="budget in batched model passes")
    p.add_argument(
        "--max-uncertainty",
        type=float,
        metavar="U",
        help="deep ensembles: largest spread across the members a pattern may have on every output",
    )
    p.add_argument(
        "--format",
        choices=_writers.FORMATS,
        help="table (default, for people), jsonl (one JSON object per pattern: input, output, error), "
        "csv (a header row, then input columns, outputs, errors), npy (one structured array: needs --output); "
        "every format but table sends the summary to stderr",
    )
    p.add_argument("--jsonl", action="store_true", help="same as --format jsonl")
    p.add_argument("-o", "--output", metavar="FILE", help="write the patterns to FILE instead of stdout")
    p.add_argument(
        "--names",
        action="store_true",
        help="with jsonl: input as {feature: value}; with csv: one column per feature; levels by name",
    )
    p.set_defaults(run=cmd_invert)

    p = sub.add_parser("train", help="train a model on a CSV table on the server, register it, show progress")
    p.add_argument("data", metavar="DATA.csv")
    p.add_argument("--name", required=True, help="name to register the model under")
    p.add_argument("--target", action="append", required=True, metavar="COL", help="target column(s)")
    p.add_argument("--features", action="append", metavar="A,B,C", help="feature columns (default: all others)")
    p.add_argument("--categorical", action="append", metavar="COL", help="columns holding level names")
    p.add_argument("--hidden", metavar="64,64", help="hidden layer sizes")
    p.add_argument("--activation", choices=["relu", "tanh", "silu", "gelu"])
    p.add_argument("--epochs", type=int, help="maximum epochs (default 1000; training stops when it converges)")
    p.add_argument("--batch-size", type=int, help="default: scaled to the table")
    p.add_argument(
        "--time-budget", type=float, metavar="SECONDS", help="train at most this long; the best model so far is kept"
    )
    p.add_argument(
        "--ensemble",
        type=int,
        metavar="K",
        help="train a deep ensemble of K networks: outputs their mean and spread (see invert --max-uncertainty)",
    )
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--validation-fraction", type=float)
    p.add_argument("--patience", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--jsonl", action="store_true", help="print every event as a JSON line instead of a progress bar")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("health", help="print the server's health status (exit 0 when SERVING)")
    p.add_argument("--wait", type=float, metavar="SECONDS", help="wait up to SECONDS for SERVING")
    p.set_defaults(run=cmd_health)
    # The connection options work after the command too (`preimage health --server H:P`).
    for name, subparser in sub.choices.items():
        if name != "serve":
            _connection_options(subparser, with_defaults=False)
    return parser


def _serve(argv: list[str]) -> int:
    try:
        # Imported by name at run time: the client package never depends on the server.
        server_cli = importlib.import_module("preimage.server.cli")
    except ImportError as exc:
        _err(
            f"preimage serve needs the server extra ({exc.name or exc} is missing): "
            "pip install 'preimage[server]' -c constraints.txt"
        )
        return 1
    return int(server_cli.main(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``preimage`` console script.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["serve"]:
        return _serve(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command == "serve":
        return _serve(args_list[args_list.index("serve") + 1 :])
    run: Callable[[Client, argparse.Namespace], int] = args.run
    try:
        client = Client(
            args.server,
            token=args.token,
            root_certificates=Path(args.tls_ca) if args.tls_ca else None,
            certificate_chain=Path(args.tls_cert) if args.tls_cert else None,
            private_key=Path(args.tls_key) if args.tls_key else None,
            timeout=args.timeout,
        )
        with client:
            return run(client, args)
    except UsageError as exc:
        parser.error(exc.message)
    except PreimageError as exc:
        where = f" (field {exc.field})" if isinstance(exc, InvalidArgumentError) and exc.field else ""
        _err(f"preimage {args.command}: {exc}{where}")
        return exc.exit_code
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, like other Unix tools; the
        # stream was cancelled on the way out. Point stdout at /dev/null so the
        # interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        _err(f"preimage {args.command}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
