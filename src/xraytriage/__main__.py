import sys

from xraytriage.cli import main

sys.exit(main())
