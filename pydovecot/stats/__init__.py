"""Statistics: events emitted by every process, counted by an unprivileged
``stats`` process into Dovecot's ``metric { }`` blocks and served as
OpenMetrics on ``service stats { inet_listener http { } }``."""
