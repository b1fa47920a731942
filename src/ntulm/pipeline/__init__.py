"""Stage 6: the whole method in one call (``ntulm run``) and its report."""

from ntulm.pipeline.config import PipelineConfig, VariantSpec, default_variants, paper_variants
from ntulm.pipeline.run import run_pipeline

__all__ = [
    "PipelineConfig",
    "VariantSpec",
    "default_variants",
    "paper_variants",
    "run_pipeline",
]
