"""Tenant notifications over AMQP: wire models, publisher, reply consumer, tenant client, provisioning."""
