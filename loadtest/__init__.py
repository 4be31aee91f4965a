"""Locust swarms of protocol v1 players (docs/loadtest.md).

``locustfile.py`` is what Locust loads; ``client.py`` is one player's WebSocket connection
(websocket-client under gevent); ``behaviors.py`` steers players; ``metrics.py`` holds the
figures a worker keeps and how several workers' figures add up; ``layout.py`` finds zone
borders; ``swarm.py`` runs a whole multi-process world plus a swarm (``make swarm``).

Only ``locustfile.py`` and ``client.py`` import gevent, Locust or websocket-client: the other
modules can be imported anywhere (benchmarks, tests) without monkeypatching anything.
"""
