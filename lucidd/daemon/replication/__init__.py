"""The replicator: sealed session logs copied to S3-compatible object storage."""
