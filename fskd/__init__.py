"""fskd."""
