"""NTULM: social-media post embeddings enriched with their non-textual units (NTUs).

Stages, in the order data flows: ``posts`` (readers, NTU extraction) -> ``graph`` (user-hashtag
graph) -> NTU embeddings -> NTU-enriched language model -> post embeddings -> evaluation.
"""

__version__ = "0.1.0"
