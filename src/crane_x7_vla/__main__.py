import sys

from crane_x7_vla.cli import main

sys.exit(main())
