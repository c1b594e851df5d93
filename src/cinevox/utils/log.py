"""Logging set-up for the command line (library code only calls ``logging.getLogger``)."""

from __future__ import annotations

import logging


class _TqdmHandler(logging.StreamHandler):
    """Write log records through tqdm so that progress bars are not broken."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record))
        except Exception:  # fall back to the plain stream
            super().emit(record)


def setup_logging(verbose: int = 0) -> None:
    level = logging.WARNING if verbose < 0 else logging.INFO if verbose == 0 else logging.DEBUG
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("cinevox")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def bar_disabled(progress: bool) -> bool | None:
    """tqdm's ``disable``: off when ``progress`` is False, and off when stderr is not a terminal (None), so that
    logs and CI output hold one line per step instead of progress-bar redraws."""
    return None if progress else True
