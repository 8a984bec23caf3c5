"""The command line's subcommands, one module each with a `main(args)`: what runs when an admin types
`evacuator <command>`. Their arguments are declared in cli.py, which imports a command's module only when
it runs; whatever a command needs that does I/O, it gets from the wiring."""
