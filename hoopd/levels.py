"""The access levels, lowest first (docs: README "Access levels", hoopd.policy.decide)."""

LEVELS = ("read_only", "read_write", "admin")
LEVEL_RANK = {name: i for i, name in enumerate(LEVELS)}
