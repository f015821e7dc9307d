"""`python -m harness <command>`: one module per command."""
