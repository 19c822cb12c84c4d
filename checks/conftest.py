"""Loads the diag plugin for runs of these checks: `pytest checks/ …` from a clone, `pytest <site>/diag/checks`.

The plugin has no pytest11 entry point, so other projects' pytest runs in the same environment never see
diag's options. With `--pyargs diag.checks` pytest reads this file too late for the options; add `-p diag.plugin`.
"""

pytest_plugins = ["diag.plugin"]
