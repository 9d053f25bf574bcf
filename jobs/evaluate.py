"""Ray job entry point for the evaluation stage: `python jobs/evaluate.py CONFIG [--set k=v ...]`."""

import sys

from instructscale.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
