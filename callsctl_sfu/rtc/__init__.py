"""Media: the shared UDP port, per-session peers and the forwarding path."""
