"""The evacuator: watches this hypervisor's health, tells tenants, and moves their VMs to healthy hosts.

A wing per area, each importing only the wings below it (pyproject.toml holds the import-linter contracts):

    cli, daemon, settings, errors, logs    entry points, the YAML settings, the exception tree, logging
    commands/    one module per subcommand (a new CLI command goes here, and into cli.py's parser)
    wiring/      the composition root: the only place that builds I/O objects from the settings
    incident/    a sick spell: planner, notices, timers, tenant replies (policy and desk), the service
    moves/       durable moves: journal, state machine, engine, runners, rollback, local transfer slots
    migrate/     the steps of one move: cold, live, a group's shutdown, pre-copy (a new step goes here)
    peers/       daemon to daemon over the broker: requests, responder, own-host services, cloud slots
    hypervisor/  the Protocol the movers drive, its value types, the VM's facts; libvirt/ the adapter
    transfer/    bytes between hosts: chunks, block digests, file I/O, the data channel
    lab/         local libvirt hosts, a broker and sysfs for the tests and the demo (production never
                 imports it; `evacuator demo` aside)
"""
