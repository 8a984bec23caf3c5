"""Attacks on the daemons, each reproduced against the real broker and real daemons, and each refused."""
