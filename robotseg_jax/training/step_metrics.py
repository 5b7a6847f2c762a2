"""The train loop's per-step metrics on the host, fetched late so that the host does not wait for every step, and
the divergence stop that reads them."""

from __future__ import annotations

import jax

from robotseg_jax.errors import ConfigValueError


class DivergedError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


class StepMetrics:
    """Each step's metrics, fetched to the host `lag` steps late: the host prepares and dispatches the next step
    while the device runs this one, instead of waiting for it every step (lag 0). The divergence stop counts
    consecutive skipped steps (non-finite loss or gradient) as their metrics arrive, so it fires `lag` steps
    late."""

    def __init__(self, lag: int, max_consecutive_skips: int):
        if lag < 0:
            raise ConfigValueError(f"metrics_lag_steps={lag} must be >= 0")
        self.lag, self.max_consecutive_skips = lag, max_consecutive_skips
        self._pending: list[tuple[int, dict]] = []  # (step, metrics on the device)
        self._fetched: list[dict] = []
        self._consecutive_skips = 0

    def add(self, step: int, metrics: dict) -> None:
        self._pending.append((step, metrics))
        while len(self._pending) > self.lag:
            self._fetch_oldest()

    def take_all(self) -> list[dict]:
        """The metrics of every step since the last call (fetching what is still pending)."""
        while self._pending:
            self._fetch_oldest()
        fetched, self._fetched = self._fetched, []
        return fetched

    def _fetch_oldest(self) -> None:
        step, metrics = self._pending.pop(0)
        metrics = jax.device_get(metrics)
        self._fetched.append(metrics)
        self._consecutive_skips = self._consecutive_skips + 1 if metrics["skipped"] else 0
        if self._consecutive_skips >= self.max_consecutive_skips:
            raise DivergedError(
                f"{self._consecutive_skips} consecutive steps had a non-finite loss or gradient (step {step})"
            )
