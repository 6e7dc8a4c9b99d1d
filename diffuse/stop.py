"""Stopping a training run cleanly: SIGINT, SIGTERM and SIGUSR2 become a flag checked between steps, so the step
finishes and a checkpoint is written before the process exits."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Callable

from diffuse import DiffuseError

log = logging.getLogger(__name__)

# SIGUSR2 is what SLURM sends ahead of a time limit or preemption with `--signal=USR2@SECONDS`, and what submitit
# turns into a requeue: its handler, if one is installed, runs after the checkpoint (`then_requeue`).
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


class TrainingInterrupted(DiffuseError):
    """A stop signal: the step finished and a checkpoint was written."""


class StopRequest:
    """Turns the SIGNALS into a flag checked between steps; a second signal interrupts at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._saved: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("%s received: finishing this step, then saving a checkpoint (again to stop at once)",
                    signal.Signals(signum).name)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)

    @property
    def then_requeue(self) -> Callable | None:
        """The handler that held the signal before training (submitit's requeue for SIGUSR2), to run once the
        checkpoint is written; None for the default handlers."""
        handler = self._saved.get(self.signal)
        return handler if callable(handler) and handler not in (signal.default_int_handler,) else None
