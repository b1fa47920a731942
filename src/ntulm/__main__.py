import sys

from ntulm.cli import main

sys.exit(main())
