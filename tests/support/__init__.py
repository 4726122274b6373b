"""Helpers the tests and the benchmarks share: a Prefect server and workers (prefect_cli),
the Prefect API (prefect_api), PostgreSQL (postgres), a browser (browser), a flow in its own
process (flow_process), the secret scan (secret_scan) and the distributed-batch cluster
(cluster). No tests here: bench imports these, never a test module."""
