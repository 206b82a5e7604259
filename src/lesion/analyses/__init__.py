"""Recipes on ``sweep`` and the statistics, each returning a tidy DataFrame: the unit table, curves,
noise, the rotation control, selectivity measures, direct effects, the attribution estimate.

May import ``core``, ``engine``, ``backends``, ``models`` and ``data``; nothing above them.
"""
