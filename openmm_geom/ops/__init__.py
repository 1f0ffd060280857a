"""Low-level operations shared by every model: neighbour pairs (vesin-torch + the native
``pair_geometry`` op), path signatures (:mod:`.signature`) and the opt-in ``torch.compile``
helpers (:mod:`.compile`)."""
from ._library import load_ops_library

load_ops_library()

from .compile import CompiledCall, compile_model  # noqa: E402
from .neighbors import NeighborPairs, check_box_holds_cutoff, check_cutoff, neighbor_pairs  # noqa: E402
from .pair_geometry import pair_geometry  # noqa: E402

__all__ = ["neighbor_pairs", "NeighborPairs", "check_box_holds_cutoff", "check_cutoff",
           "pair_geometry", "load_ops_library", "signature", "compile_model", "CompiledCall"]
