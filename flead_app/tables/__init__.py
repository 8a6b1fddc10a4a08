"""Faust tables (per-device state, the federated-averaging buffer) and their row types (``rows``).

Faust finds the tables when a worker starts (``flead_app.app.DISCOVER``);
``faust -A flead_app.app tables`` lists them with their help text.
"""
