"""Subcommands of the ``dinov2-heads`` command line, one module each."""
