"""The ``tag`` command line: runs the pipeline flow in-process and dispatches its subcommands."""
