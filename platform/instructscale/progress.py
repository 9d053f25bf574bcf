"""Quiet, informative runs: one progress line per stage, library logs to files, ``-v`` for more."""

from __future__ import annotations

import logging
import os
import sys
import time

from instructscale.redact import RedactingFilter

log = logging.getLogger("instructscale")
LIBRARY_LOGGERS = (
    "ray",
    "vllm",
    "deepspeed",
    "DeepSpeed",
    "transformers",
    "torch",
    "urllib3",
    "filelock",
    "httpx",
    "botocore",
    "s3fs",
    "fsspec",
    "peft",
    "accelerate",
    "optuna",
)
_verbose = False


def verbose() -> bool:
    return _verbose


class _ConsoleFilter(logging.Filter):
    """Quiet console: instructscale's warnings and errors, other libraries' errors only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _verbose:
            return True
        if record.name.startswith("instructscale"):
            return record.levelno >= logging.WARNING
        return record.levelno >= logging.ERROR


def _mark(handler: logging.Handler) -> logging.Handler:
    handler._instructscale = True
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def quiet_library_handlers() -> None:
    """Route libraries that print through console handlers of their own (Ray, Ray Data, DeepSpeed,
    vLLM, ...) through ours: their records then reach the log file, and the console per ``-v``."""
    for name in list(logging.root.manager.loggerDict):
        if not name.startswith(LIBRARY_LOGGERS):
            continue
        lib = logging.getLogger(name)
        for handler in list(lib.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                lib.removeHandler(handler)
        lib.propagate = True


def name_the_accelerator() -> None:
    """Tell DeepSpeed which accelerator this process has, so that importing it (transformers does)
    prints no detection warning to stdout."""
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        os.environ["DS_ACCELERATOR"] = "cuda" if torch.cuda.is_available() else "cpu"


def _no_library_progress_bars() -> None:
    """Hugging Face's progress bars (loading and writing weights) off, also where those libraries
    were imported before this ran (they read the setting at import)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils.logging import disable_progress_bar

        disable_progress_bar()


def setup_logging(is_verbose: bool, log_dir: str | None = None) -> str | None:
    """Console: instructscale's warnings (everything with ``-v``); file ``log_dir/instructscale.log``:
    everything at INFO and above. Returns the log file's path."""
    global _verbose
    _verbose = is_verbose
    if not is_verbose:
        _no_library_progress_bars()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_instructscale", False):
            root.removeHandler(handler)
    console = _mark(logging.StreamHandler(sys.stderr))
    console.addFilter(_ConsoleFilter())
    root.addHandler(console)
    root.setLevel(logging.DEBUG if is_verbose else logging.INFO)
    path = None
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        path = os.path.join(log_dir, "instructscale.log")
        to_file = _mark(logging.FileHandler(path))
        to_file.setLevel(logging.INFO)
        root.addHandler(to_file)
    quiet_library_handlers()
    return path


def _fmt_rate(n: float, seconds: float) -> str:
    """Units a second, or seconds a unit for slow ones (experiment trials take minutes)."""
    if seconds <= 0 or n <= 0:
        return "-"
    return f"{n / seconds:,.1f}/s" if n / seconds >= 0.1 else f"{seconds / n:,.0f} s each"


class Progress:
    """One line for one stage: done / total, rate, ETA. A terminal sees it redrawn in place; a log or
    a pipe gets the final line only (and a line a minute for long stages)."""

    def __init__(self, stage: str, total: int | None = None, unit: str = "rows", stream=None, done: int = 0):
        """``done``: units finished before this run (a resumed one): counted, but not in the rate."""
        self.stage, self.total, self.unit = stage, total, unit
        self.done, self.before, self.t0 = done, done, time.time()
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._last = 0.0

    def update(self, n: int, note: str = "") -> None:
        self.done += n
        now = time.time()
        if self.tty and now - self._last > 0.2:
            self._write(self._line(note), end="\r")
            self._last = now
        elif not self.tty and now - self._last > 60 and now - self.t0 > 60:
            self._write(self._line(note))
            self._last = now
        log.debug("%s", self._line(note))

    def _line(self, note: str = "") -> str:
        elapsed = time.time() - self.t0
        of = f"/{self.total:,}" if self.total else ""
        eta = ""
        new = self.done - self.before
        if self.total and new > 0 and self.done < self.total:
            eta = f", ETA {(self.total - self.done) * elapsed / new:.0f} s"
        extra = f", {note}" if note else ""
        return f"{self.stage:<9} {self.done:,}{of} {self.unit}, {_fmt_rate(new, elapsed)}, {elapsed:.1f} s{eta}{extra}"

    def _write(self, text: str, end: str = "\n") -> None:
        pad = " " * 8 if end == "\r" else ""
        print(text + pad, end=end, file=self.stream, flush=True)

    def close(self, note: str = "") -> None:
        line = self._line(note)
        self._write(line)
        log.info("%s", line)
