"""The GREFEL_* environment variables: each has one home (the module that reads it) and is
checked once, by `grefel.cli.main`, before any command runs.

A variable read deep inside a command is read where a bad value cannot be told from a bad input:
`GREFEL_MAX_PIXELS=lots` made `grefel eval` call every image unreadable and `grefel serve` start
as if nothing were wrong. Checked up front, a bad value is one `Error:` line naming the variable.
"""

from __future__ import annotations

import os

from grefel.errors import ConfigError

__all__ = ["check_environment"]

def check_environment() -> None:
    """ConfigError naming the first GREFEL_* variable whose value its home would refuse:
    GREFEL_MAX_PIXELS (grefel.contract.max_pixels) and GREFEL_CUDA (grefel.runtime.cuda_layer;
    GREFEL_CRASH_DIR, any folder, is grefel.crash's). Nothing is imported for a variable that
    is not set."""
    if os.environ.get("GREFEL_MAX_PIXELS", "").strip():
        from grefel.contract import ImageError, max_pixels

        try:
            max_pixels()
        except ImageError as exc:
            raise ConfigError(str(exc)) from None
    if os.environ.get("GREFEL_CUDA", "").strip():
        from grefel.runtime.cuda_layer import layer_choice

        try:
            layer_choice()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
