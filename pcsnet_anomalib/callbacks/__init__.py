"""Lightning callbacks usable with any anomalib model."""

from .kshot import KShotSelection

__all__ = ["KShotSelection"]
