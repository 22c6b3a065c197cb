"""Text output of the ``preimage`` CLI: tables, model descriptions and the training progress bar."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from preimage.client.types import (
    FeatureKind,
    InvertSummary,
    ModelInfo,
    OutputMetrics,
    TrainProgress,
    TrainResult,
)

__all__ = [
    "ProgressBar",
    "describe_model",
    "format_number",
    "json_line",
    "models_table",
    "summary_lines",
    "table",
    "train_result_lines",
]


def json_line(obj: Any) -> str:
    """One compact JSON line (no spaces: one object per line, easy to grep)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=True)


def format_number(value: Any) -> str:
    """Numbers to 6 significant digits, everything else as ``str``."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A left-aligned plain-text table with a header row."""
    cells = [[str(h) for h in header], *[[format_number(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def models_table(models: Sequence[ModelInfo]) -> str:
    """The ``preimage models`` table."""
    rows = [
        [
            m.name,
            m.version,
            ",".join(m.aliases) or "-",
            "yes" if m.latest else "",
            m.input_width,
            m.output_width,
            _size(m.size_bytes),
            m.created_at.strftime("%Y-%m-%d %H:%M:%S") if m.created_at else "-",
            m.source.value,
        ]
        for m in models
    ]
    return table(["NAME", "VERSION", "ALIASES", "LATEST", "INPUTS", "OUTPUTS", "SIZE", "CREATED", "SOURCE"], rows)


def _feature_range(kind: FeatureKind, lo: float | None, hi: float | None, levels: Sequence[str]) -> str:
    if kind is FeatureKind.CATEGORICAL:
        return "|".join(levels)
    if kind is FeatureKind.BINARY:
        return "{0, 1}"
    low = "-inf" if lo is None else format_number(lo)
    high = "inf" if hi is None else format_number(hi)
    return f"[{low}, {high}]"


def describe_model(info: ModelInfo) -> str:
    """The ``preimage show`` text: identity, storage, then the schema."""
    tags = ["latest"] if info.latest else []
    if info.aliases:
        tags.append("aliases: " + ", ".join(info.aliases))
    lines = [
        f"{info.ref}" + (f"  ({'; '.join(tags)})" if tags else ""),
        f"sha256   {info.sha256}",
        f"size     {info.size_bytes} bytes",
        f"created  {info.created_at.isoformat() if info.created_at else '-'}",
        f"source   {info.source.value}",
        f"inputs   {len(info.schema.inputs)} features, {info.input_width} columns",
    ]
    feature_rows = [[f.name, f.kind.value, _feature_range(f.kind, f.min, f.max, f.levels)] for f in info.schema.inputs]
    lines += ["  " + line for line in table(["NAME", "KIND", "RANGE"], feature_rows).splitlines()]
    lines.append(f"outputs  {', '.join(info.schema.output_names) or info.output_width}")
    if info.statistics is not None:
        lines.append(f"training data  {info.statistics.rows} rows (statistics stored)")
    t = info.training
    if t is not None:
        net = "x".join(map(str, t.hidden_sizes)) or "linear"
        lines.append(
            f"trained  network {net}{_members(t.ensemble)}, {t.epochs_run} epochs ({t.stop_reason}), "
            f"batch {t.batch_size}, {t.rows} rows, {t.elapsed_seconds:.3g} s"
        )
        lines.extend(f"  validation {_metrics_text(m)}" for m in t.metrics)
    return "\n".join(lines)


def _members(ensemble: int) -> str:
    return f" x {ensemble} ensemble members (metrics of their mean)" if ensemble else ""


def _metrics_text(m: OutputMetrics) -> str:
    """``NAME: mse … r2 … residual …`` and, for a deep ensemble, the spread over the validation rows."""
    text = (
        f"{m.output}: mse {m.mse:.4g}  mae {m.mae:.4g}  r2 {m.r2:.4f}  "
        f"residual std {m.residual_std:.4g}  p95 |residual| {m.residual_p95:.4g}"
    )
    if m.spread_median or m.spread_p95:
        text += f"  spread median {m.spread_median:.4g}  p95 {m.spread_p95:.4g}"
    return text


def summary_lines(summary: InvertSummary) -> list[str]:
    """The summary of an Invert stream, for people."""
    lines = [
        f"{summary.status.value}: {summary.returned} of {summary.requested} patterns from {summary.model} "
        f"in {summary.elapsed_seconds:.3g} s "
        f"({summary.forward_passes} forward / {summary.backward_passes} backward passes, "
        + ("shared run" if summary.shared else f"seed {summary.seed}")
        + ")",
    ]
    if summary.message:
        lines.append(summary.message)
    if summary.returned < summary.requested and summary.closest_output:
        closest = ", ".join(format_number(v) for v in summary.closest_output)
        lines.append(f"closest output reached: {closest} (error {summary.closest_error:.3g})")
    if summary.preimage_size is not None:
        lines.append(f"exact preimage size: {summary.preimage_size}")
    return lines


def train_result_lines(result: TrainResult) -> list[str]:
    """The model reference, then one line of validation metrics per output."""
    lines = [result.model.ref]
    lines.extend(_metrics_text(m) for m in result.metrics)
    for c in result.candidates:
        mark = "*" if c.selected else " "
        net = "x".join(map(str, c.hidden_sizes)) or "linear"
        lines.append(f"{mark} network {net}: val loss {c.validation_loss:.4g}, {c.epochs_run} epochs, {c.stop_reason}")
    if result.ensemble:
        lines.append(f"ensemble of {result.ensemble} members of the selected network (metrics of their mean)")
    lines.append(
        f"{result.epochs_run} epochs ({result.stop_reason}), {result.rows} rows, batch {result.batch_size}, "
        f"{result.elapsed_seconds:.3g} s"
    )
    return lines


class ProgressBar:
    """A one-line training progress bar on a terminal; periodic plain lines otherwise.

    Args:
        stream: Where to draw (stderr in the CLI).
        interval: Seconds between lines when ``stream`` is not a terminal.
    """

    WIDTH = 24

    def __init__(self, stream: TextIO = sys.stderr, interval: float = 2.0) -> None:
        self.stream = stream
        self.live = bool(getattr(stream, "isatty", lambda: False)())
        self.interval = interval
        self._last = 0.0
        self._drawn = False

    def update(self, p: TrainProgress) -> None:
        """Show one epoch's progress."""
        share = p.epoch / p.epochs if p.epochs else 0.0
        filled = round(share * self.WIDTH)
        net = f"net {p.candidate + 1}/{p.candidates} " if p.candidates > 1 else ""
        text = (
            f"{net}epoch {p.epoch}/{p.epochs} [{'#' * filled}{'.' * (self.WIDTH - filled)}] "
            f"train {p.train_loss:.4g}  val {p.validation_loss:.4g}  best {p.best_validation_loss:.4g}  "
            f"{p.elapsed_seconds:.0f}s, eta {p.eta_seconds:.0f}s"
        )
        if self.live:
            self.stream.write("\r\x1b[2K" + text)
            self.stream.flush()
            self._drawn = True
            return
        now = time.monotonic()
        if now - self._last >= self.interval or p.epoch == p.epochs:
            self._last = now
            self.stream.write(text + "\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        """Print a line (a warning) without breaking the bar."""
        self.close()
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
