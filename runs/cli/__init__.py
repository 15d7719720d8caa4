"""The `ssmscope` command line: one module per command group; main.py holds the Typer app."""
