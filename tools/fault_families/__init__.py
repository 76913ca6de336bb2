"""The fault families of issue 27, one module each, every case run by the fault campaign.

Each module here defines

    FAMILY: str                                   # e.g. "27.1 outputs never alias inputs"
    def cases(scratch: Path) -> List[Case]        # tools.fault_campaign.Case objects

and is found by `family_modules()` (no list to keep in step). `python -m tools.fault_campaign`
runs them after the corpus cases of issue 13; `tests/test_fault_families.py` runs each module's
cases in CI and requires every outcome to be "clear error" or "handled". A case's `side` is the
family's short name (its module name), so the record counts outcomes per family.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import List

__all__ = ["family_modules"]


def family_modules() -> List[ModuleType]:
    """The family modules of this package, in name order."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return [importlib.import_module(f"{__name__}.{name}") for name in names]
