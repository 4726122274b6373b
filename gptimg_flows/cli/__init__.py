"""The `gptimg` command (commands), the check that a Prefect API answers (server_check), and
the no-key demo (demo). `gptimg_flows.cli:main` is the console script."""

from gptimg_flows.cli.commands import app, main

__all__ = ["app", "main"]
