"""One module per ``genrec`` subcommand (see :mod:`infra.cli`)."""
