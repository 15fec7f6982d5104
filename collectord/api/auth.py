"""The one place where a request's tenant and role are decided.

Tokens are kept as sha256 hashes; a request's bearer token is hashed and looked up. With no
tokens configured (allowed only on a loopback bind) every request runs as the listeners'
tenant with every role.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from aiohttp import web

from collectord.api.errors import ApiError
from collectord.config import Config

ROLE_RANK = {"reader": 1, "writer": 1, "admin": 2}
# Which roles may do what: readers read, writers write, admins do both and purge.
ALLOWED = {
    "read": {"reader", "admin"},
    "write": {"writer", "admin"},
    "admin": {"admin"},
}


@dataclass(frozen=True)
class Principal:
    tenant: str
    role: str


class Authenticator:
    def __init__(self, config: Config) -> None:
        self.default = Principal(config.ingest.tenant, "admin")
        self.tokens = {token.sha256.lower(): Principal(token.tenant, token.role) for token in config.auth.tokens}

    def reload(self, old: Config, new: Config) -> None:
        """A reload hook: the next request is checked against the new tokens."""
        fresh = Authenticator(new)
        self.default, self.tokens = fresh.default, fresh.tokens

    def principal(self, request: web.Request) -> Principal:
        if not self.tokens:
            return self.default
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthorized")
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        for known, principal in self.tokens.items():
            if hmac.compare_digest(known, digest):
                return principal
        raise ApiError(401, "unauthorized")

    def require(self, request: web.Request, action: str) -> Principal:
        principal = self.principal(request)
        if principal.role not in ALLOWED[action]:
            needed = " | ".join(sorted(ALLOWED[action]))
            raise ApiError(403, "forbidden", role=principal.role, needed=needed)
        return principal
