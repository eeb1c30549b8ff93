"""One module per group of `emt` subcommands; each has `register(subparsers)`."""
from cluster.commands import data, evaluate, models

MODULES = (evaluate, data, models)
