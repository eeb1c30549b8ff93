"""One module per group of `emt` subcommands; each has `register(subparsers)`."""
from cluster.commands import baseline, data, evaluate, matrix, mitigate, models, serve, tune

MODULES = (evaluate, data, models, matrix, baseline, serve, tune, mitigate)
