"""Bytes of volumes between hosts: chunks, block digests, local file I/O, and the data channel (wire, sender,
receiver, tickets) through which a peer's daemon writes a copy itself."""
