"""`python -m kvmfleet` is the `kvmfleet` command."""

import sys

from kvmfleet.cli import main

sys.exit(main())
