"""Plumbing that all five Service365 services share.

Only mechanisms live here (settings, database sessions, the event envelope, outbox relay,
consumer, metrics, auth checks, errors, logging, pagination); payload schemas stay in the
services that read them.
"""
