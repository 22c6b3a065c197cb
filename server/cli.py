"""``preimage serve``: flags → :class:`Settings` → :func:`preimage.server.app.run`.

Only flags given on the command line are passed to ``Settings``, so they
override environment variables, which override the TOML file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from preimage.server.settings import Settings, default_registry_dir, device_problem

__all__ = ["build_parser", "main", "settings_from_args"]


def build_parser() -> argparse.ArgumentParser:
    """The ``serve`` argument parser; every flag maps to a :class:`Settings` field."""
    p = argparse.ArgumentParser(
        prog="preimage serve",
        description="Run the preimage gRPC server.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="TOML file with settings (env PREIMAGE_CONFIG)")
    p.add_argument("--address", help="HOST:PORT to listen on (default 127.0.0.1:50051)")
    p.add_argument("--registry", dest="registry_dir", help=f"registry directory (default {default_registry_dir()})")
    p.add_argument("--index", help="shared index postgresql://USER[:PASS]@HOST:PORT/DB (with --blobs)")
    p.add_argument("--blobs", help="shared blob store s3://BUCKET/PREFIX (with --index; AWS_* variables apply)")
    p.add_argument("--watch", dest="watch_dir", help="register DIR/NAME/*.onnx and pick up changes while serving")
    p.add_argument("--watch-interval", dest="watch_interval_seconds", type=float, help="seconds between scans")
    p.add_argument("--max-model-bytes", type=int, help="largest ONNX model accepted (default 256 MiB)")
    p.add_argument("--cache-size", type=int, help="converted models kept in memory (default 8)")
    p.add_argument("--max-message-bytes", type=int, help="largest gRPC message (default 64 MiB)")
    p.add_argument("--max-invert-count", type=int, help="largest n per Invert call")
    p.add_argument("--max-concurrent-inverts", type=int, help="Invert runs at once (default: the cores, 2 to 8)")
    p.add_argument("--invert-queue-size", type=int, help="Invert calls that may wait for a slot (default 1024)")
    p.add_argument(
        "--invert-sharing",
        action=argparse.BooleanOptionalAction,
        help="serve concurrent unseeded Invert calls from shared runs (default on)",
    )
    p.add_argument("--invert-shared-max-count", type=int, help="largest n served from a shared run (default 4096)")
    p.add_argument("--max-concurrent-trains", type=int, help="Train streams at once")
    p.add_argument("--train-queue-size", type=int, help="Train calls that may wait for a slot (default 16)")
    p.add_argument("--invert-max-seconds", type=float, help="cap on one Invert call's time budget")
    p.add_argument("--invert-max-passes", type=int, help="cap on one Invert call's model passes")
    p.add_argument("--train-max-seconds", type=float, help="cap on one Train call's time")
    p.add_argument("--train-min-rows", type=int, help="fewest rows Train accepts")
    p.add_argument("--torch-threads", type=int, help="torch intra-op threads")
    p.add_argument("--device", help="torch device models run on: cpu (default), cuda, cuda:1, ...")
    p.add_argument(
        "--predict-coalescing",
        action=argparse.BooleanOptionalAction,
        help="coalesce concurrent Predict calls into shared passes (default on)",
    )
    p.add_argument("--predict-batch-delay-ms", type=float, help="ms a Predict pass waits for more calls (default 0)")
    p.add_argument("--predict-max-batch-rows", type=int, help="most rows in one coalesced Predict pass")
    p.add_argument(
        "--predict-inline-max-ms",
        type=float,
        help="a lone Predict runs on the event loop when its pass takes at most this (default 2; 0: off)",
    )
    p.add_argument(
        "--switch-interval-ms",
        type=float,
        help="how long a Python thread may hold the interpreter lock while another waits (default 0.5)",
    )
    p.add_argument("--engine-workers", type=int, help="worker threads for engine and registry work")
    p.add_argument("--metrics-address", help="HOST:PORT for the Prometheus endpoint (off by default)")
    p.add_argument("--log-format", choices=["plain", "json"], help="log line format")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log level")
    p.add_argument("--tls-cert", help="PEM certificate chain (enables TLS with --tls-key)")
    p.add_argument("--tls-key", help="PEM private key")
    p.add_argument("--tls-client-ca", help="PEM CA bundle: require client certificates (mTLS)")
    p.add_argument(
        "--admin-token", dest="admin_tokens", action="append", help="bearer token allowed every RPC (repeat)"
    )
    p.add_argument("--read-token", dest="read_tokens", action="append", help="read-only bearer token (repeat)")
    p.add_argument("--reflection", action="store_true", help="serve gRPC reflection")
    p.add_argument("--shutdown-grace", dest="shutdown_grace_seconds", type=float, help="seconds to drain on SIGTERM")
    return p


def settings_from_args(argv: Sequence[str]) -> Settings:
    """Parse ``argv`` into settings; raises SystemExit(2) with a message on bad values."""
    parser = build_parser()
    args: dict[str, Any] = vars(parser.parse_args(list(argv)))
    try:
        settings = Settings(**args)
    except (ValidationError, ValueError) as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
    if settings.device != "cpu" and (problem := device_problem(settings.device)):
        parser.error(f"--device: {problem}")
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``preimage serve``."""
    settings = settings_from_args(sys.argv[1:] if argv is None else argv)
    from preimage.server.app import run
    from preimage.server.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    from preimage.errors import UnavailableError

    try:
        return run(settings)
    except (OSError, UnavailableError) as exc:  # e.g. the shared index or blob store cannot be reached
        print(f"preimage serve: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
