"""Contract tests shared by every shimlet (see ``shimlet_contract``)."""
