pytest_plugins = ["gptimg_flows.testing.fixtures"]
