"""Faust agents, one module each: detector, federated averaging, sink, global-model follower.

``flead_app.app`` imports them all; import ``flead_app.app`` (not this package) to get a
fully registered application.
"""
