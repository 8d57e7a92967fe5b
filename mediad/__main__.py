import sys

from mediad.server import main

sys.exit(main())
