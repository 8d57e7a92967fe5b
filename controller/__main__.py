import sys

from controller.server import main

sys.exit(main())
