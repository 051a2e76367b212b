"""Who may join a WD-DP run: a party proves its name with a join token or with its client certificate.

- Join tokens (any server without client certificates): the operator holds one secret token per party
  name, as `name:token` lines in a file (`cpml-master aggregate --party-tokens`, or generated into --out),
  and hands each party its own line (`cpml-party --token-file`). A Join must name a party of the file and
  carry its token, compared in constant time; anything else is UNAUTHENTICATED.
- Mutual TLS (`--tls-client-ca`): the party's name is its certificate's identity (subject CN or a
  subject alternative name, from the gRPC auth context); a Join naming anyone else is PERMISSION_DENIED,
  and so is any later call from a certificate that is not the party's.
Tokens are never logged; the error messages name the party, never the token.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path

import grpc
import structlog

from cpml.dp.session import RunError
from cpml.errors import argument_error
from cpml.files import read_capped, write_atomically

log = structlog.get_logger(__name__)

TOKEN_FILE = "party-tokens"  # all of a run's tokens, in --out
TOKEN_DIR = "join-tokens"  # one file per party, to hand out
MIN_TOKEN_LENGTH = 16
MAX_TOKEN_LENGTH = 256
MAX_TOKEN_FILE_BYTES = 1 << 20
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_TOKEN_PATTERN = re.compile(rf"[\x21-\x39\x3b-\x7e]{{{MIN_TOKEN_LENGTH},{MAX_TOKEN_LENGTH}}}")  # no ':' or space


class Unauthenticated(RunError):
    """A Join that does not prove who is calling."""

    status = "UNAUTHENTICATED"


class PermissionDenied(RunError):
    """A caller whose certificate names someone other than the party it speaks for."""

    status = "PERMISSION_DENIED"


class TokenAdmission:
    """Admit a Join only with the secret token of the party it names."""

    def __init__(self, tokens: dict[str, str]) -> None:
        if not tokens:
            raise argument_error("party_tokens", "hold at least one name:token line", "none")
        self._tokens = {name: token.encode() for name, token in tokens.items()}
        self._dummy = secrets.token_urlsafe(32).encode()

    @property
    def roster(self) -> tuple[str, ...]:
        """The party names that may join, in file order."""
        return tuple(self._tokens)

    def admit(self, name: str, token: str, context: grpc.aio.ServicerContext | None) -> str:
        """The party name if `token` is that party's, else raise Unauthenticated."""
        expected = self._tokens.get(name, self._dummy)
        # Always one comparison over the expected token, whether or not the name exists.
        matches = hmac.compare_digest(token.encode(), expected)
        if not (matches and name in self._tokens):
            raise Unauthenticated(
                f"Join as party {name!r} must carry that party's join token (cpml-party --token-file, from the server's"
                " operator); the token is missing or wrong, or the name is not on the run's list."
            )
        return name

    def check_caller(self, name: str, context: grpc.aio.ServicerContext | None) -> None:
        """Later calls are authenticated by the secret party id Join returned."""


class CertificateAdmission:
    """Admit a Join only under a name the caller's client certificate carries (mutual TLS)."""

    def __init__(self, allowed: Sequence[str] | None = None) -> None:
        self._allowed = tuple(allowed) if allowed else None

    @property
    def roster(self) -> tuple[str, ...] | None:
        """The certificate identities that may join, or None for any the client CA signed."""
        return self._allowed

    def admit(self, name: str, token: str, context: grpc.aio.ServicerContext | None) -> str:
        """The party name (the certificate's CN if `name` is empty) if the certificate carries it."""
        identities = peer_identities(context)
        if not identities:
            raise Unauthenticated(
                "Join must come over mutual TLS with a client certificate signed by the"
                " server's --tls-client-ca; this call presented none."
            )
        name = name or identities[0]
        if name not in identities:
            raise PermissionDenied(
                f"Join as party {name!r} must come with a client certificate for that name; this"
                f" certificate is for {', '.join(map(repr, identities))}."
            )
        if self._allowed is not None and name not in self._allowed:
            raise PermissionDenied(f"Party {name!r} is not on this run's list of parties (--party-names).")
        return name

    def check_caller(self, name: str, context: grpc.aio.ServicerContext | None) -> None:
        """Raise PermissionDenied unless the caller's certificate is the party's."""
        if name not in peer_identities(context):
            raise PermissionDenied(f"Calls for party {name!r} must come with that party's client certificate.")


def peer_identities(context: grpc.aio.ServicerContext | None) -> tuple[str, ...]:
    """The caller's certificate CN first, then its subject alternative names (empty without mTLS)."""
    if context is None:
        return ()
    auth = context.auth_context() or {}
    names: list[str] = []
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for value in auth.get(key, ()):
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            if text and text not in names:
                names.append(text)
    return tuple(names)


def check_names(names: Iterable[str], flag: str) -> tuple[str, ...]:
    """Refuse names that cannot be party names in token files (and file names)."""
    names = tuple(names)
    for name in names:
        if not NAME_PATTERN.fullmatch(name):
            raise argument_error(
                flag,
                "name parties with letters, digits and . _ @ - (at most 128, starting with a letter or digit)",
                name,
            )
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise argument_error(flag, "name each party once", duplicate)
    return names


def read_token_file(path: Path | str) -> dict[str, str]:
    """The name -> token map of a file of `name:token` lines (blank lines and # comments skipped)."""
    tokens: dict[str, str] = {}
    for number, line in _lines(path, "party_tokens"):
        name, sep, token = line.partition(":")
        if not sep:
            # The line itself may be a token: it is never shown.
            raise argument_error("party_tokens", "hold name:token lines", f"line {number} of {path}, which has no ':'")
        check_names([name], "party_tokens")
        _check_token(token, f"the token of {name!r} in {path}", "party_tokens")
        if name in tokens:
            raise argument_error("party_tokens", f"list each party once in {path}", name)
        tokens[name] = token
    if not tokens:
        raise argument_error("party_tokens", "hold at least one name:token line", str(path))
    return tokens


def read_party_token(path: Path | str) -> tuple[str | None, str]:
    """A party's own token file: one line, `token` or `name:token`; returns (name or None, token)."""
    lines = _lines(path, "token_file")
    if len(lines) != 1:
        raise argument_error(
            "token_file",
            "hold this party's token alone (one line: token or name:token),"
            f" not {len(lines)} lines; give each party only its own line",
            str(path),
        )
    line = lines[0][1]
    head, sep, tail = line.partition(":")
    name, token = (head, tail) if sep else (None, head)
    if name is not None:
        check_names([name], "token_file")
    _check_token(token, f"the token in {path}", "token_file")
    return name, token


def generate_tokens(names: Sequence[str]) -> dict[str, str]:
    """A fresh random token (256 bits) for each name."""
    return {name: secrets.token_urlsafe(32) for name in check_names(names, "party_names")}


def write_tokens(out: Path, tokens: dict[str, str]) -> tuple[Path, Path]:
    """Write --out/party-tokens and --out/join-tokens/<name> (each `name:token`), all mode 0600."""
    out.mkdir(parents=True, exist_ok=True)
    folder = out / TOKEN_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    for name, token in tokens.items():
        write_atomically(folder / name, f"{name}:{token}\n", private=True)
    path = write_atomically(out / TOKEN_FILE, "".join(f"{n}:{t}\n" for n, t in tokens.items()), private=True)
    return path, folder


def certificate_name(path: Path | str) -> str:
    """The subject CN of a PEM certificate (else its first DNS name): a party's name under mTLS."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise argument_error("tls_cert", "be a readable PEM certificate", f"{path} ({exc})") from None
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if common:
        return str(common[0].value)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = None
    dns = sans.get_values_for_type(x509.DNSName) if sans else []
    if not dns:
        raise argument_error("tls_cert", "name its holder (subject CN or a DNS name)", str(path))
    return dns[0]


def _lines(path: Path | str, flag: str) -> list[tuple[int, str]]:
    text = read_capped(path, MAX_TOKEN_FILE_BYTES, flag, "UTF-8 file")
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.strip().startswith("#")
    ]


def _check_token(token: str, where: str, flag: str) -> None:
    if not _TOKEN_PATTERN.fullmatch(token):
        raise argument_error(
            flag,
            f"give {where} as {MIN_TOKEN_LENGTH} to {MAX_TOKEN_LENGTH} printable"
            " ASCII characters without spaces or ':'",
            f"{len(token)} characters",
        )
