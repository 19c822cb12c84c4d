"""diag's checks: what users run (`pytest checks/` from a clone, `diag.checks` from an installed package)."""
