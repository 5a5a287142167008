"""The gate's processes beside the server: the scan worker, the webhook receiver, and what they share
(retries, logging, liveness, the worker credential header, the ledger client)."""
