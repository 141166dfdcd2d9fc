"""The queue consumer: keeps engines resident, batches tiles across jobs, stores results.

:mod:`.tasks` runs one job alone (so a plain ``rq worker`` can serve the queue);
:mod:`.batching` is the production worker that runs tiles of many jobs in each engine call.
"""
