"""lucidd: a host daemon that seals streams of chunks (compress, AES-256-GCM, SHA-256) and keeps an RFC 9162 Merkle log per session."""

__version__ = "0.1.0"
