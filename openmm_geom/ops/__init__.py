"""Low-level operations shared by every model (neighbour lists)."""
from .neighbors import check_box_holds_cutoff, neighbor_pairs

__all__ = ["neighbor_pairs", "check_box_holds_cutoff"]
