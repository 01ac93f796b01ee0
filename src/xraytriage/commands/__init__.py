"""CLI subcommands. Each module: ``register(subparsers)`` adds its parser and sets ``handler``."""
