"""SMTP submission (RFC 6409) after login: the session relaying to the MTA."""
