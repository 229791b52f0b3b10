import sys

from labkit.report.cli import main

sys.exit(main())
