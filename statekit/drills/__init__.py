"""Drills and demos that the CLI, the notebooks and the design review run: a live outage,
network impairments, cluster failovers, a workload to watch, an agent graph that grows.

They sit above both the runtime and `statekit.testing` (whose servers, proxy and fault
injectors they drive); nothing in the runtime imports them.
"""
