"""Issue 27's fault families in CI: the cases of every `benchmarks/fault_families` module, run
through the CLI in its own process exactly as `python -m benchmarks.fault_campaign` runs it,
must end as a clear error or a handled (and checked) result. A case marked `ci=False` (a slower
variant of one CI runs: another server start, another training step) runs in the campaign
only, so the suite stays within CI's time."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from benchmarks.fault_campaign import classify
from benchmarks.fault_families import family_modules

HELD = ("clear error", "handled")


@pytest.mark.parametrize("module", family_modules(), ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_family_holds(module: ModuleType, tmp_path: Path) -> None:
    cases = [case for case in module.cases(tmp_path / "scratch") if case.ci]
    assert cases, f"{module.__name__} has no cases"
    failed = []
    for i, case in enumerate(cases):
        work = tmp_path / "work" / f"{i:03d}"
        work.mkdir(parents=True)
        outcome = classify(case, case.run(work), work)
        if outcome.category not in HELD:
            failed.append(f"{case.name}: {outcome.category}: {outcome.note} "
                          f"| {' / '.join(outcome.output_head[-3:])}")
    assert not failed, "\n".join(failed)
