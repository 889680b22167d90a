"""``python -m deepvid_jax.cli``: the ``deepvid`` command."""

import sys

from deepvid_jax.cli import main

sys.exit(main())
