"""`python -m cli`, the same as the `imagepipe` console script."""

from cli.main import main

main()
