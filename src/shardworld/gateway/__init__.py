"""The gateway: players connect over WebSockets; the world is behind a :class:`WorldPort`.

:class:`Gateway` (server.py) moves bytes; :class:`Session` (session.py) is one connection's
protocol state machine, sans-I/O; auth.py issues and verifies player tokens.
"""

from shardworld.gateway.auth import AuthError, Claims, TokenVerifier, issue_token, verify_token
from shardworld.gateway.port import EmbeddedWorld, WorldInfo, WorldPort
from shardworld.gateway.server import Gateway, GatewayConfig
from shardworld.gateway.session import Session, SessionLimits

__all__ = [
    "AuthError",
    "Claims",
    "EmbeddedWorld",
    "Gateway",
    "GatewayConfig",
    "Session",
    "SessionLimits",
    "TokenVerifier",
    "WorldInfo",
    "WorldPort",
    "issue_token",
    "verify_token",
]
