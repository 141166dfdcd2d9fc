"""Webhooks: tell a job's client that it ended, durably and safely.

:mod:`.notifications` decides what to send when a job ends, :mod:`.outbox` keeps deliveries
in Redis until a receiver takes them, :mod:`.delivery` sends them (the dispatcher),
:mod:`.targets` decides where a webhook may go and :mod:`.signature` signs the body.
"""
