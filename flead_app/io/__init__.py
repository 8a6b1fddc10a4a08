"""The I/O layer: Kafka clients and topics (``kafka``), the database (``db``), Kafka traffic (``traffic``).

It may import the pure core (``flead_app.algorithms``, ``flead_app.models``) and the settings, and
nothing above it: the worker, the dashboard and the commands call into it, never the reverse.
"""
