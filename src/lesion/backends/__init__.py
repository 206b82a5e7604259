"""Where work runs beyond this process: a Ray cluster, for one sweep's shards or a graph of jobs.

``ray`` holds the cluster connection (loopback by default, deadlines on every wait); ``ray_sweep``
shards one sweep. Imports ``core``, ``engine`` and ``ray`` (lazily), never the studies of
``lesion.experiments``.
"""
