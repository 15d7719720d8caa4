"""`python -m ssmscope.runs.cli` runs the `ssmscope` command."""

from ssmscope.runs.cli.main import main

main()
