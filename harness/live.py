"""What a run shows while it trains: run.json's "live" fields, curve.jsonl as it grows, TensorBoard if asked.

The trainer hands each finished step's curve point here; every few seconds of wallclock (and at each validation)
the new points are appended to curve.jsonl and the record is rewritten atomically with "live" and "steps" current,
so `status`, a report or a person tailing the file sees the run move, and a crash leaves every point written up
to the last refresh. The record the run writes at its end (and curve.jsonl written whole then) stays the source
of truth; only the master rank writes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from harness.errors import UserError
from harness.results import write_curve, write_json_atomic

REFRESH_SECONDS = 5.0  # wallclock between two refreshes of run.json and curve.jsonl: ~1 atomic write per 5 s
TENSORBOARD_INSTALL = "pip install tensorboard"


def check_tensorboard() -> None:
    """Refuse --tensorboard before anything trains when the package that writes event files is missing."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise UserError(f"--tensorboard needs the tensorboard package ({exc}); install it: "
                        f"{TENSORBOARD_INSTALL}") from None


def finite(value) -> float | None:
    """A float for the record, or None: a diverged loss or an overflowing gradient norm is not valid JSON."""
    return float(value) if value is not None and math.isfinite(value) else None


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class LiveRecord:
    """The running run's view: refreshes run.json's "live" and "steps", appends curve.jsonl, mirrors TensorBoard.

    `enabled`: this process writes (the master rank); the others only keep the calls cheap no-ops.
    """

    def __init__(self, run_dir: Path, record: dict, enabled: bool, max_steps: int | None, cap_seconds: float,
                 tensorboard: Path | None = None, refresh_seconds: float = REFRESH_SECONDS):
        self.run_dir, self.record, self.enabled = Path(run_dir), record, enabled
        self.max_steps, self.cap_seconds, self.refresh_seconds = max_steps, cap_seconds, refresh_seconds
        self.curve: list[dict] = []
        self.written = 0  # curve points already in curve.jsonl (and TensorBoard)
        self.file = None
        self.last_refresh = time.monotonic()
        self.last_tokens = self.last_seconds = 0.0
        self.val_bpb = self.val_step = None
        self.writer = None
        if enabled and tensorboard is not None:
            from torch.utils.tensorboard import SummaryWriter

            directory = Path(tensorboard) / record["run_id"]
            try:
                self.writer = SummaryWriter(log_dir=str(directory))
            except OSError as exc:
                raise UserError(f"--tensorboard {tensorboard}: cannot write event files there ({exc.strerror})") \
                    from None
            record["tensorboard"] = str(directory)

    def start(self, curve: list[dict]) -> None:
        """Begin (or, on resume, continue) at `curve`: curve.jsonl is written whole with it, so the points a
        stopped attempt appended after its checkpoint are not repeated, then opened for appending."""
        self.curve, self.written = curve, len(curve)
        if curve:
            self.last_tokens, self.last_seconds = curve[-1]["tokens"], curve[-1]["seconds"]
            val = [p for p in curve if p.get("val_bpb") is not None]
            if val:
                self.val_bpb, self.val_step = val[-1]["val_bpb"], val[-1]["step"]
        if not self.enabled:
            return
        path = self.run_dir / "curve.jsonl"
        write_curve(path, curve)
        self.file = open(path, "a", encoding="utf-8")
        self.refresh()

    def step_done(self) -> None:
        """After each step, its point complete (validation included): refresh when REFRESH_SECONDS have passed."""
        if self.enabled and time.monotonic() - self.last_refresh >= self.refresh_seconds:
            self.refresh()

    def validated(self, step: int, val_bpb: float) -> None:
        self.val_bpb, self.val_step = val_bpb, step

    def refresh(self) -> None:
        """Append the new points to curve.jsonl, mirror them to TensorBoard, rewrite run.json with "live"."""
        if not self.enabled:
            return
        self.emit()
        last = self.curve[-1] if self.curve else None
        seconds = last["seconds"] if last else 0.0
        tokens = last["tokens"] if last else 0
        rate = ((tokens - self.last_tokens) / (seconds - self.last_seconds)
                if last and seconds > self.last_seconds else None)
        self.last_tokens, self.last_seconds = tokens, seconds
        self.record["steps"] = last["step"] if last else 0
        self.record["live"] = {
            "step": self.record["steps"], "max_steps": self.max_steps, "seconds": seconds,
            "time_left_seconds": max(self.cap_seconds - seconds, 0.0),
            "train_loss": last.get("train_loss") if last else None, "val_bpb": self.val_bpb,
            "val_step": self.val_step, "tokens_per_second": finite(rate), "updated_at": utc_now()}
        try:
            write_json_atomic(self.run_dir / "run.json", self.record)
        except OSError:  # a full disk: training goes on, and the record written at the end says what happened
            pass
        self.last_refresh = time.monotonic()

    def emit(self) -> None:
        """The points not yet written: appended to curve.jsonl (flushed, so a crash keeps them) and TensorBoard."""
        new = self.curve[self.written:]
        if not new:
            return
        if self.file is not None:
            try:
                self.file.write("".join(json.dumps(p, allow_nan=False) + "\n" for p in new))
                self.file.flush()
            except OSError:  # a full disk: the record written at the end says what happened
                pass
        if self.writer is not None:
            for p in new:
                self.scalars(p["step"], {"train/loss": p.get("train_loss"), "train/lr": p.get("lr"),
                                         "train/grad_norm": p.get("grad_norm"),
                                         "train/tokens_per_second": p.get("tokens_per_second"),
                                         "val/bpb": p.get("val_bpb"), "val/loss": p.get("val_loss")})
            self.writer.flush()
        self.written = len(self.curve)

    def scalars(self, step: int, values: dict) -> None:
        for tag, value in values.items():
            if value is not None:
                self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        """At the run's end, before curve.jsonl is written whole: the last points to TensorBoard, the file shut."""
        if not self.enabled:
            return
        file, self.file = self.file, None  # the whole curve is written next: nothing more is appended
        if file is not None:
            file.close()
        self.emit()

    def final(self, record: dict) -> None:
        """The scores of record, once known, as TensorBoard scalars at the last step; then the writer is closed."""
        if self.writer is None:
            return
        step = record.get("steps") or 0
        self.scalars(step, {"final/val_bpb": record.get("val_bpb"),
                            "final/val_bpb_post_quant": record.get("val_bpb_post_quant"),
                            "final/artifact_total_bytes": record.get("artifact_total_bytes")})
        self.writer.close()
        self.writer = None
