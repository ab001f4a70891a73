"""Checks of how the inputs of a solve are placed (meshes, processes)."""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import NamedSharding


def check_placement(call: str, params: Any, dynamic: Any) -> None:
    """Raise a clear error when the inputs of a solve cannot be placed together.

    ``jax.jit`` needs every sharded input on one mesh; its own error names no
    argument. Checked here, before tracing: every ``NamedSharding`` of
    ``params`` and of the data arguments ``dynamic`` uses one mesh (the same
    devices, in the same layout, with the same axis names).

    Raises:
        ValueError: two leaves on different meshes (both named, with their meshes).
    """
    # The common cases (no NamedSharding, or one mesh object) cost one pass
    # over the leaves; names are only worked out for the error.
    meshes = [
        leaf.sharding.mesh
        for leaf in jax.tree.leaves((params, dynamic))
        if _placed(leaf) and isinstance(leaf.sharding, NamedSharding)
    ]
    if all(m is meshes[0] or _same_mesh(meshes[0], m) for m in meshes[1:]):
        return
    first: tuple[str, Any] | None = None
    for root, tree in (("params", params), ("args", dynamic)):
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if not _placed(leaf) or not isinstance(leaf.sharding, NamedSharding):
                continue
            name, mesh = root + jax.tree_util.keystr(path), leaf.sharding.mesh
            if first is None:
                first = (name, mesh)
            elif not _same_mesh(first[1], mesh):
                raise ValueError(
                    f"{call}: {first[0]} and {name} are sharded over different "
                    f"meshes ({_describe(first[1])} and {_describe(mesh)}); a "
                    "solve runs on one mesh: place every parameter and data "
                    "array with NamedShardings of the same jax.sharding.Mesh "
                    "(e.g. jax.device_put(x, NamedSharding(mesh, spec)))."
                )


def placed_as_given(out: Any, given: Any) -> Any:
    """``out`` (a solution's parameters) with every leaf placed as the same
    leaf of ``given`` (the parameters the solve was given), where both are
    concrete arrays of one shape and ``given``'s has a ``NamedSharding``.

    On an automatic mesh the compiler chooses the layout of the loop's
    outputs: a replicated bias added to a sharded activation came back
    sharded like it. A leaf already placed as given is returned as is (no
    copy); under ``jit``/``vmap`` the compiler decides.
    """
    if jax.tree.structure(out) != jax.tree.structure(given):
        return out

    def leaf(o: Any, g: Any) -> Any:
        if not (_placed(o) and _placed(g) and isinstance(g.sharding, NamedSharding)):
            return o
        if o.shape != g.shape or o.sharding.is_equivalent_to(g.sharding, o.ndim):
            return o
        return jax.device_put(o, g.sharding)

    return jax.tree.map(leaf, out, given)


def _placed(x: Any) -> bool:
    """A concrete array (tracers under ``jit``/``vmap`` have no sharding)."""
    return isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)


def _same_mesh(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return a.axis_names == b.axis_names and (a.device_ids == b.device_ids).all()
    except (AttributeError, ValueError):
        return a == b


def _describe(mesh: Any) -> str:
    try:
        ids = mesh.device_ids.ravel().tolist()
        return f"axes {dict(mesh.shape)} on devices {ids}"
    except AttributeError:
        return repr(mesh)
