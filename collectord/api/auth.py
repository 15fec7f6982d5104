"""The one place where a request's tenant and role are decided.

Tokens are kept as sha256 hashes; a request's bearer token is hashed and looked up. With no
tokens configured (allowed only on a loopback bind) every request runs as the listeners'
tenant with every role.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from aiohttp import web

from collectord.api.errors import ApiError
from collectord.api.rate_limit import WriteLimiter
from collectord.config import Config

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="collectord"'}
ROLE_RANK = {"reader": 1, "writer": 1, "admin": 2}
# Which roles may do what: readers read, writers write, admins do both and purge.
ALLOWED = {
    "read": {"reader", "admin"},
    "write": {"writer", "admin"},
    "admin": {"admin"},
}


def bearer_token(header: str) -> str:
    """The token in `Bearer <t>`, or as InfluxDB clients send it: `Token <t>` (v2) and
    `Basic base64(user:<t>)` (v1, Telegraf's username/password); "" when there is none."""
    scheme, _, value = header.strip().partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme in ("bearer", "token"):
        return value
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return decoded.partition(":")[2]
    return ""


@dataclass(frozen=True)
class Principal:
    tenant: str
    role: str
    # The token's hash ("" with no auth) and its write limit (0 = unlimited).
    key: str = ""
    write_rate: float = 0.0
    write_burst: int = 0


class Authenticator:
    def __init__(self, config: Config) -> None:
        auth = config.auth
        self.default = Principal(config.ingest.tenant, "admin", "", auth.write_rate, auth.write_burst)
        self.tokens = {
            token.sha256.lower(): Principal(
                token.tenant,
                token.role,
                token.sha256.lower(),
                token.write_rate or auth.write_rate,
                token.write_burst or auth.write_burst,
            )
            for token in auth.tokens
        }
        self.limiter = WriteLimiter()

    def reload(self, old: Config, new: Config) -> None:
        """A reload hook: the next request is checked against the new tokens."""
        fresh = Authenticator(new)
        self.default, self.tokens = fresh.default, fresh.tokens

    def principal(self, request: web.Request) -> Principal:
        if not self.tokens:
            return self.default
        token = bearer_token(request.headers.get("Authorization", ""))
        if not token:
            raise ApiError(401, "unauthorized", headers=CHALLENGE)
        digest = hashlib.sha256(token.encode()).hexdigest()
        for known, principal in self.tokens.items():
            if hmac.compare_digest(known, digest):
                return principal
        raise ApiError(401, "unauthorized", headers=CHALLENGE)

    def require(self, request: web.Request, action: str) -> Principal:
        """The caller, if its role may do `action`; writes also take from its rate limit."""
        principal = self.principal(request)
        if principal.role not in ALLOWED[action]:
            needed = " | ".join(sorted(ALLOWED[action]))
            raise ApiError(403, "forbidden", role=principal.role, needed=needed)
        if action == "write":
            self.limiter.check(principal.key, principal.write_rate, principal.write_burst)
        return principal
