"""pytest fixtures for testing memorization criteria (registered as the pytest plugin ``memorize``
by the package's entry point, so they are available in any test once memorize is installed).

    def test_my_criterion(memorization_cases):
        table = memorization_cases.evaluate(my_criterion)   # one row per (kind, strength)
        exact = table[table.kind == "exact"].iloc[0]
        assert exact.detection == 1.0 and exact.right_index == 1.0

``memorization_cases`` is built once per test session from scikit-learn's digits: a training subset
of 256 digits, 197 held-out digits, 32 cases per (kind, strength), seed 0. ``reference_criteria`` holds the
three criteria the field uses, to hold a criterion of one's own against:

    def test_mine_beats_the_references(memorization_cases, reference_criteria):
        for name, criterion in reference_criteria.items():
            theirs = memorization_cases.evaluate(criterion)
            ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # the plugin loads with every pytest run in the environment: heavy imports wait for use
    import numpy as np
    import pandas as pd

    from memorize.criteria_bench.evaluate import Criterion
    from memorize.criteria_bench.cases import CaseSet


@dataclass
class MemorizationBench:
    """Cases with ground truth and the training subset they were built from."""

    cases: CaseSet
    train: np.ndarray

    def evaluate(self, criterion: Criterion, target_fpr: float = 0.01) -> pd.DataFrame:
        from memorize.criteria_bench.evaluate import evaluate_criterion

        return evaluate_criterion(criterion, self.cases, self.train, target_fpr)


def digits_bench(n_train: int = 256, n_heldout: int = 197, per_kind: int = 32, seed: int = 0) -> MemorizationBench:
    from memorize.config import DataConfig
    from memorize.data import load_dataset, make_split
    from memorize.criteria_bench.cases import build_cases

    cfg = DataConfig(name="digits", n_train=n_train, n_heldout=n_heldout)
    ds = load_dataset(cfg)
    split = make_split(ds, cfg)
    train, heldout = ds.data[split.train], ds.data[split.heldout]
    return MemorizationBench(build_cases(train, heldout, per_kind, seed), train.numpy())


@pytest.fixture(scope="session")
def memorization_cases() -> MemorizationBench:
    """The digits bench (module docstring), built once per session."""
    return digits_bench()


@pytest.fixture(scope="session")
def reference_criteria() -> dict:
    """The nearest-neighbour ratio (d1/d2 < 1/3), the raw-pixel cosine and Carlini et al.'s extraction
    criterion, as bench criteria by name (:mod:`memorize.criteria_bench.evaluate`)."""
    from memorize.criteria_bench.evaluate import cosine_criterion, extraction_criterion, nn_criterion

    return {"nn d1/d2 < 1/3": nn_criterion(1 / 3), "pixel cosine": cosine_criterion("pixel"),
            "extraction (Carlini et al.)": extraction_criterion()}
