"""Ray job entry point for the training stage: `python jobs/train.py CONFIG [--set k=v ...]`."""

import sys

from instructscale.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
