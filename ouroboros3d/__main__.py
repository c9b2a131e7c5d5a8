"""``python -m ouroboros3d``: the ``ouroboros3d`` command without its installed script."""

from .inference.cli import main

raise SystemExit(main())
