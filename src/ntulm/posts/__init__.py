"""Stage 1a: posts and their NTUs. Readers for the project's JSON Lines, Twitter API v1.1 and v2,
and the IRA CSV layout, all producing :class:`~ntulm.posts.schema.Post`."""

from ntulm.posts.config import ReaderConfig
from ntulm.posts.extract import extract_ntus, normalize_handle, normalize_hashtag
from ntulm.posts.readers import PostReader, ReadReport
from ntulm.posts.schema import NTU_TYPES, Post, UserRef

__all__ = [
    "NTU_TYPES",
    "Post",
    "PostReader",
    "ReadReport",
    "ReaderConfig",
    "UserRef",
    "extract_ntus",
    "normalize_handle",
    "normalize_hashtag",
]
