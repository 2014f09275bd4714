"""`python -m kgb`: the same command line as `kgb`, for processes the proxy starts (the capture worker)."""

from kgb.cli import main

main()
