"""Subcommands of the ``disdis`` command line, one module each (see :mod:`disdis.cli`)."""
