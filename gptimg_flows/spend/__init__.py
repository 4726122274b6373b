"""Money, no Prefect: prices and estimates before paying (prices), and what was paid, read
back from an archive's sidecars (report)."""
