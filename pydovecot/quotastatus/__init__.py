"""Dovecot's quota-status service: Postfix's policy delegation protocol
answered from the users' quota (see :mod:`pydovecot.quotastatus.policy`)."""
