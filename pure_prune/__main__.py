"""``python -m pure_prune``: the same as the ``pure-prune`` command."""

from pure_prune.app.cli import entry

raise SystemExit(entry())
