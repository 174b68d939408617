"""`python -m msewatch` is the `msewatch` command."""

from msewatch.cli import main

main()
