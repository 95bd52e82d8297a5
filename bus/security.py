"""CurveZMQ for the per-process mode: key files, and which keys a router lets in.

`make_keys` writes a key pair per region and role kind (`REGION.router`, `REGION.worker`,
`REGION.ps`, ...) into `DIR/secret/`, and every public key into `DIR/public/`. A router
is a CURVE server with its own pair and lets in only clients whose public key is in
`DIR/public/` (a ZAP authenticator: an unknown key fails the handshake, so not a single
frame of it reaches the router). Roles are CURVE clients of their router; routers are
CURVE clients of their neighbours. Everything on the wire is encrypted, headers included.

Copy `public/` to every host, and to each host only the secret keys of its own regions.
"""

from __future__ import annotations

import shutil
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .errors import GeomlError
from .topology import Topology

#: The role kinds that get a key pair in every region (the middle part of an address).
ROLE_NAMES = ("router", "worker", "ps", "mirror", "hub", "aggregator", "collector",
              "shipper", "source", "sink", "inspector")


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair (Z85 text as bytes)."""

    public: bytes
    secret: bytes


@dataclass(frozen=True)
class CurveKeys:
    """A directory written by `make_keys` (or copied from one)."""

    directory: Path

    @property
    def public_dir(self) -> Path:
        return self.directory / "public"

    def pair(self, name: str) -> KeyPair:
        """The key pair `name` (e.g. 'east.worker'); GeomlError if its secret is absent."""
        path = self.directory / "secret" / f"{name}.key_secret"
        try:
            public, secret = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            raise GeomlError(f"no secret key {name!r} in {self.directory} ({exc}); make "
                             "them with `geoml keys`") from None
        if secret is None:
            raise GeomlError(f"{path} holds no secret key")
        return KeyPair(public, secret)

    def public(self, name: str) -> bytes:
        """The public key `name`; GeomlError if absent."""
        try:
            public, _ = zmq.auth.load_certificate(self.public_dir / f"{name}.key")
        except (OSError, ValueError) as exc:
            raise GeomlError(f"no public key {name!r} in {self.public_dir} ({exc})") from None
        return public

    def for_address(self, address: str) -> KeyPair:
        """The pair of the role at REGION/ROLE/INDEX."""
        region, role, _ = address.split("/")
        return self.pair(f"{region}.{role}")


def make_keys(topology: Topology, out: Path) -> list[str]:
    """A key pair per region and role kind of `topology` in `out`; returns their names.
    Refuses to overwrite keys already there."""
    secret_dir, public_dir = out / "secret", out / "public"
    if secret_dir.exists() and any(secret_dir.iterdir()):
        raise GeomlError(f"{secret_dir} already holds keys; remove it or choose another --out")
    secret_dir.mkdir(parents=True, exist_ok=True)
    public_dir.mkdir(parents=True, exist_ok=True)
    secret_dir.chmod(0o700)
    names = [f"{region}.{role}" for region in topology.region_names for role in ROLE_NAMES]
    for name in names:
        public_file, secret_file = zmq.auth.create_certificates(secret_dir, name)
        Path(secret_file).chmod(0o600)
        shutil.move(public_file, public_dir / f"{name}.key")
    return names


def client(sock: zmq.Socket[Any], own: KeyPair, server_public: bytes) -> None:
    """Make `sock` a CURVE client of the server with `server_public` (before connect)."""
    sock.curve_publickey = own.public
    sock.curve_secretkey = own.secret
    sock.curve_serverkey = server_public


_authenticators: weakref.WeakKeyDictionary[zmq.Context[Any], ThreadAuthenticator] = \
    weakref.WeakKeyDictionary()


def server(sock: zmq.Socket[Any], own: KeyPair, keys: CurveKeys) -> None:
    """Make `sock` a CURVE server (before bind) that lets in only the public keys in
    `keys.public_dir` (one ZAP authenticator per context, started on first use)."""
    ctx = sock.context
    if ctx not in _authenticators:
        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve(domain="*", location=str(keys.public_dir))
        _authenticators[ctx] = auth
    sock.curve_server = True
    sock.curve_publickey = own.public
    sock.curve_secretkey = own.secret


def stop_authenticator(ctx: zmq.Context[Any]) -> None:
    """Stop the context's ZAP authenticator, if `server` started one."""
    auth = _authenticators.pop(ctx, None)
    if auth is not None:
        auth.stop()
