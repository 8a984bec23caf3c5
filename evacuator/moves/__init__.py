"""Moves as durable records: the journal (SQLite) and its pure state machine, the engine whose workers take
each due move, or consistency group, to an ending (runner.py, groups.py, sharing attempts.py: hosts,
retries, slots, journaling), rollback, cancelling, the pure queue order, and this host's transfer caps."""
