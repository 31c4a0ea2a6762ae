"""RALF networks and losses (pure torch); see ARCHITECTURE.md for the contracts."""

from ralf.config import ClassifierConfig, DiscriminatorConfig, RALFConfig, ReconstructorConfig
from ralf.model import LABEL_CONVENTION, RALF, RALFOutput

__all__ = [
    "LABEL_CONVENTION",
    "RALF",
    "ClassifierConfig",
    "DiscriminatorConfig",
    "RALFConfig",
    "RALFOutput",
    "ReconstructorConfig",
]
