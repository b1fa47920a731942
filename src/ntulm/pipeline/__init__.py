"""Stage 6: the whole method in one call (``ntulm run``) and its report."""

from ntulm.pipeline.config import PipelineConfig, VariantSpec, paper_variants
from ntulm.pipeline.run import run_pipeline

__all__ = ["PipelineConfig", "VariantSpec", "paper_variants", "run_pipeline"]
