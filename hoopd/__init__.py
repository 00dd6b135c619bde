"""hoopd: a Layer 7 gateway for PostgreSQL."""
