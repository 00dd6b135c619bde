"""[gateway] workers = N: one supervisor process, N worker processes on one listening socket."""
