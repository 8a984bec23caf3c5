"""Moves as durable records: the journal, its state machine, the engine and runners that take each move (or
consistency group) to an ending, rollback, and this host's caps on transfers."""
