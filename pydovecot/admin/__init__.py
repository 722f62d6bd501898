"""pydoveadm: the admin command, its socket protocol, formatters and queries."""
