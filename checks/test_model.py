"""Can the eval load this model here at all, and whose code is diag's verdict on it about?

Asked once per model, before any map: a model_type the installed transformers does not know (MODEL-002), a
checkpoint whose own code does not build or run on the installed transformers (MODEL-001), no model diag may build
(MODEL-003: the memory and same-device checks skip), a verdict that rests on diag's hand-written twin instead of
the checkpoint's own code (MODEL-004).
"""

from __future__ import annotations

import pytest

from diag.checking import Check
from diag.devicemap.cases import MapCase
from diag.session import state_of

pytestmark = pytest.mark.diag


def test_model_code_runs_here(model_case: MapCase, check: Check, request: pytest.FixtureRequest) -> None:
    from diag.twins.remote import cached_problem, not_buildable, twin_note

    spec = model_case.model
    if spec is None:
        if model_case.problem is None or model_case.source is None:
            pytest.skip(model_case.problem or "no model")  # the command itself is the problem (see the map checks)
        found = not_buildable(None, model_case.problem)
        check.warn(found.code, found.message, found.fix)
        return
    problem = cached_problem(spec)
    if problem is not None and problem.code == "MODEL-003":
        check.warn(problem.code, problem.message, problem.fix)
        return
    if problem is not None:
        check.fail(problem.code, problem.message, problem.fix, subject=spec.name)
    options = state_of(request.config).options
    named = options.model is not None or bool(options.model_args and "pretrained=" in options.model_args)
    if spec.code == "twin" and named:
        fix = "Run the checks with the checkpoint on the node and --trust-remote-code, as the eval runs it."
        check.warn("MODEL-004", f"{spec.name}: {twin_note(spec)}", fix)
