"""The `gptimg` command: the app and its options (app), the commands (commands, batch, blocks)
and what they share (args), errors and exit codes (errors), quieting and progress (console),
the check that a Prefect API answers (server_check), and the no-key demo (demo).
`gptimg_flows.cli:main` is the console script."""

from gptimg_flows.cli import batch, blocks, commands  # noqa: F401  (they register the commands)
from gptimg_flows.cli.app import app, main

__all__ = ["app", "main"]
