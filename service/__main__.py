"""`python -m service` runs the service, like the `print-service` console script."""

import sys

from service.cli import main

sys.exit(main())
