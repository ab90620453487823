"""Images of OpenAI ``image_url`` content parts: ``data:`` URLs (base64 PNG / JPEG / ...) always;
``http(s)`` URLs only for hosts named by ``--allowed-media-domains`` (off by default: serving pods
often have no egress, and fetching arbitrary URLs from a server is a risk), with a size limit and a
timeout. Every failure is a ValueError naming the field."""
from __future__ import annotations

import base64
import binascii
import io
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_IMAGE_BYTES = 20 << 20
DEFAULT_FETCH_TIMEOUT = 10.0


@dataclass
class MediaOptions:
    allowed_media_domains: list[str] = field(default_factory=list)  # "*" allows any host
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    fetch_timeout: float = DEFAULT_FETCH_TIMEOUT


def _open_image(raw: bytes, where: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(raw))
        img.load()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"{where}: not a readable image ({type(e).__name__}: {e})") from None
    return img.convert("RGB")


def _check_size(n: int, opts: MediaOptions, where: str) -> None:
    if n > opts.max_image_bytes:
        raise ValueError(f"{where}: the image is larger than {opts.max_image_bytes} bytes (--max-image-bytes)")


def decode_data_url(url: str, opts: MediaOptions, where: str) -> Any:
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:"):
        raise ValueError(f"{where}: a data URL must look like data:image/png;base64,<data>")
    mime, *params = head[len("data:"):].split(";")
    if mime and not mime.startswith("image/"):
        raise ValueError(f"{where}: data URL media type {mime!r} is not an image")
    if "base64" not in params:
        raise ValueError(f"{where}: only base64 data URLs are supported (data:image/...;base64,...)")
    _check_size(len(payload) * 3 // 4, opts, where)
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}: the data URL is not valid base64") from None
    return _open_image(raw, where)


def host_allowed(host: str, domains: list[str]) -> bool:
    host = host.lower()
    return any(d == "*" or host == d.lower() or host.endswith("." + d.lower()) for d in domains)


def fetch_image(url: str, opts: MediaOptions, where: str) -> Any:
    """GET an http(s) image from an allowed host: at most ``max_image_bytes``, ``fetch_timeout`` seconds."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if not opts.allowed_media_domains:
        raise ValueError(f"{where}: http(s) image URLs are off on this server; send the image as a data: URL "
                         "(data:image/png;base64,...) or start the server with --allowed-media-domains HOST")
    if not host_allowed(host, opts.allowed_media_domains):
        raise ValueError(f"{where}: host {host!r} is not in --allowed-media-domains")
    try:
        with urllib.request.urlopen(url, timeout=opts.fetch_timeout) as resp:  # noqa: S310 - scheme checked
            raw = resp.read(opts.max_image_bytes + 1)
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise ValueError(f"{where}: fetching the image failed: {e}") from None
    _check_size(len(raw), opts, where)
    return _open_image(raw, where)


def load_image(url: Any, opts: MediaOptions, where: str) -> Any:
    """The PIL image of an ``image_url.url`` value."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"{where}: image_url.url must be a non-empty string")
    scheme = url.split(":", 1)[0].lower()
    if scheme == "data":
        return decode_data_url(url, opts, where)
    if scheme in ("http", "https"):
        return fetch_image(url, opts, where)
    raise ValueError(f"{where}: unsupported URL scheme {scheme!r}; use a data: URL (or http(s) with "
                     "--allowed-media-domains)")
