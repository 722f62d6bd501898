"""``pydovecot-lda``: Dovecot's ``dovecot-lda`` command (see :mod:`.main`)."""
