import sys

from metabench.cli import main

sys.exit(main())
