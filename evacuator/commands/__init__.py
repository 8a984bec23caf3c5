"""The command line's subcommands, one module each: what runs when an admin types `evacuator <command>`."""
