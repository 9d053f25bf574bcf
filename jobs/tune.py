"""Ray job entry point for the tuning search: `python jobs/tune.py CONFIG [--set k=v ...]`."""

import sys

from instructscale.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
