"""lucidd: a host daemon that seals streams of chunks.

Each chunk is compressed, encrypted (AES-256-GCM) and hashed (SHA-256), stored durably, and
appended to its session's RFC 9162 Merkle log.
"""

__version__ = "0.1.0"
