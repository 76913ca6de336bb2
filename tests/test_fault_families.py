"""Issue 27's fault families in CI: the cases of every `tools/fault_families` module, run
through the CLI in its own process exactly as `python -m tools.fault_campaign` runs it,
must end as a clear error or a handled (and checked) result. A case marked `ci=False` (a slower
variant of one CI runs: another server start, another training step) runs in the campaign
only, so the suite stays within CI's time."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tools.fault_campaign import classify
from tools.fault_families import family_modules

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


def test_the_nets_line_for_a_bug_counts_as_a_traceback(tmp_path: Path) -> None:
    """grefel.cli.main turns a bug into one `Error: internal error ...` line and a crash report:
    the campaign must still count it a traceback, not a clear error."""
    from tools.fault_campaign import Case, Proc

    case = Case("x", "side", "27.8", "error", lambda work: [])
    line = "Error: internal error (AttributeError: boom); a report was saved to /r.txt"
    outcome = classify(case, [Proc(["grefel"], 1, "", line + "\n", 0.1)], tmp_path)
    assert outcome.category == "traceback" and "AttributeError" in outcome.note
    clear = classify(case, [Proc(["grefel"], 1, "", "Error: x.jpg: no such file\n", 0.1)],
                     tmp_path)
    assert clear.category == "clear error"
