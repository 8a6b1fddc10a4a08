"""Faust agents, one module each: detector, federated averaging, sink, global-model follower."""

from flead_app.agents import dead_letter, detector, fedavg, global_model, sink  # noqa: F401
