import sys

from tscl.cli import main

sys.exit(main())
