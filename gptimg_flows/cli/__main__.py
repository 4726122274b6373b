"""`python -m gptimg_flows.cli`: the `gptimg` command."""

from gptimg_flows.cli import main

main()
