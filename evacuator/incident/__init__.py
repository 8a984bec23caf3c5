"""A sick spell of this host, from verdict to tenants' replies: the pure planner (which VMs, by when), the
notices each tenant gets (notices.py; a new notice goes there and into notifiers/messages.py), the
per-VM timers (timers.py the seam, scheduler.py the APScheduler adapter, rebuilt from the ledger), the pure
reply policy and the desk that carries out its decisions through the windows port, and the service that
ties them to the move engine."""
