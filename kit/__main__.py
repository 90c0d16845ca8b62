"""`python -m kit` runs the CLI."""

from kit.cli import main

main()
