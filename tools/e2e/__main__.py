import sys

from tools.e2e.main import main

sys.exit(main())
