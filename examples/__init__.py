"""Example upstream services that can be put behind the gateway."""
