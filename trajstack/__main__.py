import sys

from trajstack.cli import main

sys.exit(main())
