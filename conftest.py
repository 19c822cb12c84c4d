# Loads the diag plugin so `pytest checks/` works from a checkout; everything else lives in diag/plugin.py.
pytest_plugins = ["diag.plugin"]
