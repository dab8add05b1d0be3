# modserv-shim's test kit as a pytest plugin: the openai_stub, plugin_context, fake_* fixtures.
pytest_plugins = ["modserv_shim.testing.pytest_plugin"]
