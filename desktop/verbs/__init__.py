"""Command-line verbs. Each module here defines ``register(subparsers)``, which adds one sub-command whose
``func(args) -> int`` calls the same domain function the GUI uses. :mod:`desktop.cli` finds them all."""
