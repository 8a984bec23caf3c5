"""Daemon to daemon over the broker: the wire messages, the request client, this host's responder and the
services it runs for its peers' movers (digests, data channel), and the cloud-wide transfer slots."""
