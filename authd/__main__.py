"""``python -m authd``: run the auth daemon (see authd.main)."""

import sys

from authd.main import main

sys.exit(main())
