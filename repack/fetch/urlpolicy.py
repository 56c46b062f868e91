"""What a URL may be, and how it may be shown: the policy the transport applies to every URL and
redirect, and the one place secrets are removed from text (:func:`redact` for a URL, :func:`scrub` for
anything a server said).

Pure functions of their arguments, with no network code: the command line checks a URL or shows an
index without loading :mod:`repack.fetch.transport` (a warm ``plan`` makes no request and imports no
HTTP client).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import urllib.parse
from collections.abc import Iterable

from repack.errors import FetchError, InputError


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def may_carry_credentials(url: str, proxied: bool = False) -> bool:
    """https always; plain http only straight to this machine (through a proxy it would travel in clear)."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and not proxied and is_loopback(parts.hostname or ""))


def check_credentials_allowed(url: str, proxied: bool = False) -> None:
    """A password may travel only over https, or over plain http to this machine.

    The URL is the caller's (credentials are given with the URL they are for), so a refusal is the
    caller's mistake: an InputError, the same exit code whichever command it was given to.
    """
    if not may_carry_credentials(url, proxied):
        shown = redact(url)
        how = "through a proxy, over plain http" if proxied and is_loopback(urllib.parse.urlsplit(url).hostname or "") \
            else "over plain http"
        raise InputError(f"refusing to send credentials to {shown} {how}",
                         "use an https URL for a server that needs a password (plain http only on this machine)",
                         value=shown, expected="an https URL, or plain http to this machine")


def check_url(url: str, setting: str | None = None) -> str:
    """``url``, if the caller may give it: http(s) with a host and a valid port, or file:.

    A malformed URL the caller gave is the caller's mistake (InputError), whichever command it was
    given to; the same URL met later (a link on an index page, a redirect) is the server's (FetchError).
    """
    parts = urllib.parse.urlsplit(url)
    shown = redact(url)
    if parts.scheme == "file":
        return url
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"{shown} is not an http(s) URL", "give an http(s):// URL, or a path on this machine",
                         value=shown, expected="an http(s) URL", setting=setting)
    try:
        parts.port  # noqa: B018  # urllib checks the port only when it is asked for
    except ValueError as exc:
        raise InputError(f"{shown} is not a valid URL: {exc}", "check the host and port",
                         value=shown, expected="a port from 0 to 65535", setting=setting) from None
    return url


def check_scheme(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise FetchError(f"cannot request {redact(url)}: the scheme {scheme or 'none'!r} is not http(s)",
                         "give an http(s):// URL, or a path on this machine")


def check_redirect(origin: str, target: str) -> None:
    """A redirect may not leave http(s), nor go from https down to plain http."""
    old, new = urllib.parse.urlsplit(origin).scheme, urllib.parse.urlsplit(target).scheme
    if new not in ("http", "https") or (old == "https" and new == "http"):
        raise FetchError(f"refusing the redirect from {redact(origin)} to {redact(target)}",
                         "a server may not send a secure request on over plain http or to another scheme; "
                         "use the final URL if you trust it")


def check_link(page_url: str, link: str) -> None:
    """A page from a remote index may link only to http(s); a page on this machine may also link to files."""
    page, target = urllib.parse.urlsplit(page_url).scheme, urllib.parse.urlsplit(link).scheme
    allowed = ("http", "https", "file") if page == "file" else ("http", "https")
    if target not in allowed:
        raise FetchError(f"{redact(page_url)} links to {redact(link)}, a {target or 'schemeless'} URL",
                         "a remote index may link only to http(s) files; the index is damaged or hostile")


def redact(url: str) -> str:
    """Drop userinfo so that credentials never reach a message or a log (even from a malformed URL).

    A password holding '#', '/' or '?' ends the netloc early for urlsplit, so it would look like a
    path: wherever a ``user:...@`` shape follows the scheme, everything up to the last '@' is dropped.
    """
    parts = urllib.parse.urlsplit(url)
    if "@" in parts.netloc:
        return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    scheme, sep, rest = url.partition("://")
    userinfo, at, after = rest.rpartition("@")
    if sep and at and ":" in userinfo:
        return f"{scheme}://{after}"
    return url


def secret_forms(username: str, password: str) -> list[str]:
    """Every form in which a password could travel back inside a server's text."""
    token = f"{username}:{password}"
    forms = {password, urllib.parse.quote(password, safe=""), urllib.parse.quote(password),
             urllib.parse.quote_plus(password), json.dumps(password)[1:-1],
             json.dumps(password, ensure_ascii=False)[1:-1]}
    for raw in (token, password):
        encoded = base64.b64encode(raw.encode()).decode()
        forms |= {encoded, encoded.rstrip("="), base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")}
    return sorted((f for f in forms if f), key=len, reverse=True)


#: Below this length a secret cannot be scrubbed without mangling ordinary words: such text is withheld.
SHORT_SECRET = 4


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***``, or withheld whole when a secret is too short
    to find reliably.  Call it before any truncation: a cut may otherwise fall inside a secret."""
    forms = [s for s in secrets if s]
    if any(len(s) < SHORT_SECRET for s in forms):
        return "(message withheld: it may contain the password)" if text else text
    for secret in sorted(forms, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
