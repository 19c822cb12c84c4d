"""diag: pre-flight checks for evaluating large vision-language models on multi-GPU nodes."""

from __future__ import annotations

__version__ = "0.1.0"
