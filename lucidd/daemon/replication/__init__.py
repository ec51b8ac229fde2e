"""Replication to S3-compatible object storage (issue 14): the object layout and pack format
(``layout``), the object store client (``objects``), the replicator process (``replicator``,
``main``, ``progress``) and ``lucidd restore`` (``restore``, ``cli``)."""
