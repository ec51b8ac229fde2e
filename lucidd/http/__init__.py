"""lucidd's HTTP side: a client of the daemon's sockets (it imports nothing of lucidd.daemon)."""
