"""A sick spell of this host: the verdict turned into a plan, tenants told, windows timed, replies heard."""
