"""Pure algorithms over numpy: no Faust, Kafka or database imports here.

The agents, the sink and the Spark jobs are thin I/O shells around these functions, so every
number FLEAD reports can be reproduced (and is tested) without any service running.
"""
