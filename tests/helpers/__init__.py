"""Shared test helpers: an SMTP line client over any trio stream, Maildir inspection."""
