"""Ray job entry point for the selection stage: `python jobs/selection.py CONFIG [--set k=v ...]`."""

import sys

from instructscale.cli import main

if __name__ == "__main__":
    sys.exit(main(["select", *sys.argv[1:]]))
