"""Faust agents and tasks, one module each: detector, federated averaging, global-model follower, sink.

Each is a thin shell around the pure core (``flead_app.algorithms``): load, call once, send,
store. Faust finds them when a worker starts (``flead_app.app.DISCOVER``).
"""
