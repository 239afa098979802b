"""One module per CLI subcommand, each with ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``."""
