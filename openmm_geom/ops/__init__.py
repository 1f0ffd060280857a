"""Low-level operations shared by every model: neighbour pairs (vesin-torch + the native
``pair_geometry`` op) and path signatures (:mod:`.signature`)."""
from ._library import load_ops_library

load_ops_library()

from .neighbors import NeighborPairs, check_box_holds_cutoff, check_cutoff, neighbor_pairs  # noqa: E402
from .pair_geometry import pair_geometry  # noqa: E402

__all__ = ["neighbor_pairs", "NeighborPairs", "check_box_holds_cutoff", "check_cutoff",
           "pair_geometry", "load_ops_library", "signature"]
