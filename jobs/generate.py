"""Ray job entry point for the generation stage: `python jobs/generate.py CONFIG [--set k=v ...]`."""

import sys

from instructscale.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
