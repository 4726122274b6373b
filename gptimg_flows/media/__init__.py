"""Bytes in and out, no Prefect: what an image really is (sniff), loading inputs, streamed and
checked downloads, drawing (the offline provider and the emulator), and the request gate in
front of an httpx client's pool."""
