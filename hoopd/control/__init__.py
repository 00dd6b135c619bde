"""The control plane: HTTP control port (health, metrics, JSON API) and the SSH admin console.

``plane.ControlPlane`` is what both doors call (sessions, kill, reload, stats, redacted
config); ``http`` and ``ssh``/``console`` are the doors; ``metrics`` the Prometheus
registry; ``providers`` the interfaces for the journal (``JournalView``) and OIDC API
tokens (``TokenVerifier``), both optional. ``hoopd.tap.GatewayService`` builds it.
"""
