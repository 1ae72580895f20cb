"""``python -m pure_prune``: the same as the ``pure-prune`` command."""

from pure_prune.cli import main

raise SystemExit(main())
