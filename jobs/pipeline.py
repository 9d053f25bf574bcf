"""Ray job entry point for the whole pipeline: `python jobs/pipeline.py CONFIG [--set k=v ...]`.

Inside a submitted Ray job, RAY_ADDRESS points at the cluster and the pipeline joins it; run
locally, it starts an embedded Ray like `instructscale pipeline` does.
"""

import sys

from instructscale.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
