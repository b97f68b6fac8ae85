"""The command line: arguments, sweeps, exit codes, `--help`, the stage registry."""
