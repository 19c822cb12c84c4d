"""How a check reports: a failure with a fix code, warnings on a passing check, facts for the report.

A check fails through ``Check.fail`` which raises ``CheckFailed``; the plugin turns the exception and the
warnings recorded on the item into the report entry. Everything travels in ``user_properties`` so it
crosses from xdist workers to the controller unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn

import pytest

from diag.fixes import lookup
from diag.redact import redact_data, redact_text

USER_PROPERTY = "diag"


@dataclass(frozen=True)
class Fix:
    """What to do about a failure (the report's `fix` object)."""

    summary: str
    details: str = ""
    commands: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    device_map_file: str | None = None
    verified: bool = False

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["commands"] = list(self.commands)
        data["env"] = dict(self.env)
        return data


class CheckFailed(pytest.fail.Exception):  # type: ignore[misc,name-defined]
    """A check's verdict: the node or the configuration will break the eval, with the code and the fix."""

    def __init__(self, code: str, message: str, fix: Fix, subject: str | None) -> None:
        # Redacted here, at the source: the message also reaches pytest's own terminal lines and JUnit's <failure>.
        self.payload: dict[str, Any] = redact_data(
            {
                "code": code,
                "message": message,
                "subject": subject,
                "fix": fix.as_dict(),
                "references": list(lookup(code).references),
            }
        )
        super().__init__(msg=f"[{code}] {self.payload['message']}\n  fix: {redact_text(fix.summary)}", pytrace=False)


# pytest names its own outcome exceptions without a module path in the short summary; so do we.
CheckFailed.__module__ = "builtins"


class Check:
    """Handed to every check as the `check` fixture."""

    def __init__(self, user_properties: list[tuple[str, object]]) -> None:
        self._user_properties = user_properties

    def fail(
        self,
        code: str,
        message: str,
        summary: str | None = None,
        *,
        subject: str | None = None,
        details: str = "",
        commands: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        device_map_file: str | None = None,
        verified: bool = False,
    ) -> NoReturn:
        """Fail the check with a catalog code; the fix summary defaults to the catalog's fix."""
        fix = Fix(summary or lookup(code).fix, details, tuple(commands), dict(env or {}), device_map_file, verified)
        raise CheckFailed(code, message, fix, subject)

    def warn(self, code: str, message: str, fix: str | None = None) -> None:
        """Record a risk that does not fail this run on this stack (the report's `warnings`)."""
        self._user_properties.append(
            (
                USER_PROPERTY,
                redact_data({"warning": {"code": code, "message": message, "fix": fix or lookup(code).fix}}),
            )
        )

    def record(self, key: str, value: object) -> None:
        """Attach a fact to this check's report entry (`checks[].data`), e.g. the P2P matrix."""
        self._user_properties.append((USER_PROPERTY, redact_data({"data": {key: value}})))
