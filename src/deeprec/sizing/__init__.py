"""Cluster sizing: how many frontends, workers and shards a target load needs.

``costs`` holds per-component CPU costs measured on a machine (``deeprec profile
--costs``); ``work`` turns a model, a plan and those costs into what one query asks of
each tier; ``simulate`` is a discrete-event simulation of a cluster serving Poisson
queries; ``size`` searches for the smallest cluster whose simulated tail meets the SLA
and writes it as Helm values.
"""
