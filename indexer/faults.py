"""Crash points for the kill tests: `SHOPCLIP_KILL_AT=<step>` makes the process SIGKILL itself at that step.

Production never sets the variable; the tests use it to prove that a writer killed at any named step
leaves the catalogue and the published index in their previous, loadable state.
"""

from __future__ import annotations

import os
import signal

KILL_AT_ENV = "SHOPCLIP_KILL_AT"


def crash_point(step: str) -> None:
    """Die here, without cleanup, when the environment names this step."""
    if os.environ.get(KILL_AT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
