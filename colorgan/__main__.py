import sys

from colorgan.cli import main

sys.exit(main())
