"""The same-device check: run a tiny twin with the eval's map, name the cross-device step, verify the fix."""
