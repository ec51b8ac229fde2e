"""The supervisor process: the data socket, the shared-memory ring, the children."""
