"""`python -m clipforge ...`: the same command line as the `clipforge` script, for environments without it on PATH."""

import sys

from clipforge.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
