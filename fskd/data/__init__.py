"""fskd.data."""
