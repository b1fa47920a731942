"""Tweet text normalisation before tokenising (the same function in training and inference).

Follows the TweetEval / BERTweet convention: user mentions become ``@user`` and links ``http``,
so the model learns neither specific handles nor t.co hashes from the text (the author and the
mentioned users reach the model as NTUs instead).
"""

from __future__ import annotations

import html

import regex

from ntulm.lm.config import TextNormConfig

_MENTION = regex.compile(r"(?<![\w@])[@＠]\w{1,50}")
_URL = regex.compile(r"(?:https?://|www\.)\S+", regex.IGNORECASE)
_SPACE = regex.compile(r"\s+")


def normalize_text(text: str, cfg: TextNormConfig) -> str:
    """``"RT @Bob: see https://t.co/x &amp; more"`` -> ``"RT @user: see http & more"``."""
    if cfg.unescape_html:
        text = html.unescape(text)
    if cfg.urls is not None:
        text = _URL.sub(cfg.urls, text)
    if cfg.mentions is not None:
        text = _MENTION.sub(cfg.mentions, text)
    if cfg.collapse_whitespace:
        text = _SPACE.sub(" ", text).strip()
    return text
