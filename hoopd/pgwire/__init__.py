"""Sans-IO PostgreSQL v3 protocol: framing, message codecs, SCRAM, errors.

Nothing here does I/O or imports Twisted or the rest of hoopd: feed bytes in, get
messages or bytes out. See the notes in shared/notes/postgres-protocol.md.
"""
