"""NTU extraction from post text, for sources without entity annotations (IRA CSV, texts).

Rules follow Twitter's own (twitter-text) closely enough for research use:
- URLs (``http(s)://`` or ``www.``) are found first, trailing punctuation and unbalanced closing
  brackets stripped, then blanked out together with e-mail addresses, so a ``#fragment`` or
  ``user@host`` inside them never becomes a hashtag or mention;
- a hashtag is ``#`` (or fullwidth ``＃``) not preceded by a letter, digit, ``_``, ``&`` or ``/``,
  followed by letters, combining marks, digits or ``_`` with at least one letter (so ``#1`` is not
  a hashtag, ``#日本`` and ``#हिन्दी`` are), normalised with NFKC + casefold;
- a mention is ``@`` (or ``＠``) not preceded by a word character, followed by 1-15 of
  ``[A-Za-z0-9_]`` and not by another handle character; handles are lower-cased.
HTML entities (``&amp;``) are decoded by the readers before extraction.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import urlsplit

import regex

_WORD = r"\p{L}\p{M}\p{N}_"
HASHTAG_RE = regex.compile(rf"(?<![{_WORD}&/])[#＃]([{_WORD}]*[\p{{L}}\p{{M}}][{_WORD}]*)")
MENTION_RE = regex.compile(
    r"(?<![\p{L}\p{N}_@＠!#$%&*])[@＠]([A-Za-z0-9_]{1,15})(?![A-Za-z0-9_@＠])"
)
URL_RE = regex.compile(r"(?i)\b(?:https?://|www\.|pic\.twitter\.com/)[^\s<>\"\u2026]+")
EMAIL_RE = regex.compile(r"[\p{L}\p{N}._%+-]+@[\p{L}\p{N}-]+(?:\.[\p{L}\p{N}-]+)+")
_TRAILING = ".,;:!?'\"*"
_PAIRS = {")": "(", "]": "[", "}": "{"}
MEDIA_HOSTS = ("pic.twitter.com", "pbs.twimg.com", "video.twimg.com")


def normalize_hashtag(tag: str) -> str:
    """``#DeepLook`` / ``deeplook`` / ``ＤｅｅｐＬｏｏｋ`` -> ``deeplook``."""
    tag = tag.strip()
    if tag[:1] in "#＃":
        tag = tag[1:]
    return unicodedata.normalize("NFKC", tag).casefold()


def normalize_handle(handle: str) -> str:
    handle = handle.strip()
    if handle[:1] in "@＠":
        handle = handle[1:]
    return handle.lower()


def _trim_url(url: str) -> str:
    while url:
        last = url[-1]
        if last in _TRAILING or last in _PAIRS and url.count(_PAIRS[last]) < url.count(last):
            url = url[:-1]
        else:
            break
    return url


def find_urls(text: str) -> list[str]:
    return [u for u in (_trim_url(m.group(0)) for m in URL_RE.finditer(text)) if len(u) > 4]


def url_domain(url: str) -> str | None:
    """Host of a URL, lower-case, without ``www.``; ``None`` if there is none."""
    if "://" not in url:
        url = "http://" + url
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    if not host:
        return None
    host = host.lower().rstrip(".")
    if "." not in host or any(c.isspace() for c in host):
        return None
    return host[4:] if host.startswith("www.") else host


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def extract_ntus(text: str) -> tuple[list[str], list[str], list[str], list[str]]:
    """Return ``(hashtags, mention_handles, urls, media)`` found in ``text``, each de-duplicated
    in order of appearance."""
    urls = find_urls(text)
    media = [u for u in urls if ("twi" in u and (url_domain(u) or "") in MEDIA_HOSTS)]
    links = [u for u in urls if u not in media]
    scrubbed = URL_RE.sub(" ", text)
    scrubbed = EMAIL_RE.sub(" ", scrubbed)
    tags = _dedupe([normalize_hashtag(m.group(1)) for m in HASHTAG_RE.finditer(scrubbed)])
    handles = _dedupe([m.group(1).lower() for m in MENTION_RE.finditer(scrubbed)])
    return tags, handles, _dedupe(links), _dedupe(media)
