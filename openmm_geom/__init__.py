"""openmm-geom: geometric deep-learning potentials and collective variables inside OpenMM.

Data flows data -> models -> training -> export -> openmm (forces, biasing, reporters) ->
analysis. The public entry points for the OpenMM bridge are
:func:`openmm_geom.export.export_model`, :func:`openmm_geom.openmm.torch_force`,
:func:`openmm_geom.openmm.python_force` and :func:`openmm_geom.export.check_export`.
"""
__version__ = "0.1.0"

from ._threads import set_threads  # noqa: E402

__all__ = ["__version__", "set_threads", "native_build_info", "plugin_error"]


def _load_plugin():
    """Import the OpenMM plugin so TorchCVForce's kernels are registered with the platforms."""
    # openmm first: its import loads the platform plugins (CPU, ...), and the kernels can only
    # be registered with platforms that exist.
    import openmm  # noqa: F401

    try:
        from . import torchcv_plugin  # noqa: F401
    except ImportError as error:  # not built: everything but TorchCVForce still works
        return error
    return None


_PLUGIN_ERROR = _load_plugin()


def plugin_error():
    """Why the TorchCVForce plugin could not be loaded, or None if it is loaded."""
    return _PLUGIN_ERROR


def native_build_info() -> dict:
    """What the compiled extension ``openmm_geom._native`` was built against (raises if absent)."""
    from . import _native

    return dict(_native.build_info())
