"""`python -m diag run [diag options] -- COMMAND …`: the checks an eval command implies, then the command."""
