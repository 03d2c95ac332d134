"""The names of the cheat modes (`--faulty MODE`), without what they do: the commands that list
or check a mode (`node serve --help`, `dev swarm --help`, `NodeConfig`) import this light
module, and only a node that cheats imports `node.faults` (and torch) for the wrappers."""

from __future__ import annotations

import enum


class FaultMode(enum.StrEnum):
    """The cheat modes (`--faulty` values); `node.faults` says what each one does."""

    NOISE = "noise"
    SKIP_BLOCK = "skip-block"
    WRONG_WEIGHTS = "wrong-weights"
    LOW_PRECISION = "low-precision"
    STALE = "stale"
    EQUIVOCATE = "equivocate"
    WITHHOLD = "withhold"
    NO_COMMIT = "no-commit"
    STEER = "steer"
    FAIL_AFTER_PAYMENT = "fail-after-payment"


FAULT_MODES: tuple[str, ...] = tuple(mode.value for mode in FaultMode)
