"""``python -m metricdepth``."""

from metricdepth.cli import main

main()
