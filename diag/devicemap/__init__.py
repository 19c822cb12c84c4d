"""Device maps: where they come from, how the evals build them, and whether they hold up."""
