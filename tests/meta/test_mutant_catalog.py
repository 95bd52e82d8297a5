"""The mutant catalog stays applicable: each break still names code that exists, once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.mutants.catalog import MUTANTS, Mutant

ROOT = Path(__file__).resolve().parents[2]


def test_the_catalog_has_at_least_twenty_distinct_mutants() -> None:
    assert len(MUTANTS) >= 20
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_each_mutant_applies_to_exactly_one_place_and_names_real_tests(mutant: Mutant) -> None:
    source = (ROOT / mutant.file).read_text()
    mutated = mutant.apply(source)  # raises unless `old` occurs exactly once
    assert mutated != source
    compile(mutated, mutant.file, "exec")  # a break of behaviour, not of syntax
    for test in mutant.tests:
        assert (ROOT / test.split("::")[0]).is_file(), test
