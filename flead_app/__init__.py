"""FLEAD: federated anomaly detection for IoT fleets, as a Faust application."""

__version__ = "0.1.0"
