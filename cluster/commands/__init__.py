"""One module per group of `emt` subcommands; each has `register(subparsers)`."""
from cluster.commands import baseline, data, evaluate, matrix, models, serve, tune

MODULES = (evaluate, data, models, matrix, baseline, serve, tune)
