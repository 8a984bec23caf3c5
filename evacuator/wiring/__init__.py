"""The composition root: the only place that builds I/O objects from the settings and connects them.

One module per area: `incident` (notices, timers, replies, the service), `moves` (the journaled engine),
`peers` (what this host asks of and serves to other hosts' daemons), and `runtime`, which puts the daemon
together."""
