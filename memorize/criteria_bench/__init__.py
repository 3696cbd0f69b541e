"""A test bench for memorization criteria: cases with ground truth and their evaluation.

    from memorize.criteria_bench import build_cases, evaluate_criterion

    cases = build_cases(train, heldout)              # copies, altered copies, mixtures, novel images
    table = evaluate_criterion(my_criterion, cases, train.numpy())

pytest users get the fixture ``memorization_cases`` (:mod:`memorize.pytest_plugin`, registered as a
pytest plugin by the package). ``memorize criteria`` runs the bench from the command line.
"""

from memorize.criteria_bench.evaluate import (CriterionError, as_output, cosine_criterion, evaluate_criterion,
                                              extraction_criterion, load_criterion, nn_criterion, run_criterion)
from memorize.criteria_bench.cases import DEFAULT_STRENGTHS, KIND_CLASS, CaseSet, build_cases

__all__ = ["CaseSet", "CriterionError", "DEFAULT_STRENGTHS", "KIND_CLASS", "as_output", "build_cases",
           "cosine_criterion", "evaluate_criterion", "extraction_criterion", "load_criterion", "nn_criterion",
           "run_criterion"]
