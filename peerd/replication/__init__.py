"""Replication: the sync client and listener, the rolling worker, the scheduled reconcile, syncs by hand."""
