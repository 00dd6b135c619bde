"""The MCP endpoint (issue 15): coding agents call tools over HTTP; each call runs as a
real gateway session (identity, policy, masking, review, journal) through a loopback
listener that only takes one-time tickets."""
