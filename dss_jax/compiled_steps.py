"""The train step compiled ahead of time: one XLA executable per global batch shape.

Fixed-shape batches (``pack=False`` or SeqIO packing) have one shape; bucketed packing
(``pack="buckets"``) a few, one per (rows, encoder row length, decoder row length) that
the data needs.  ``CompiledSteps.prepare`` compiles, before the first step, every shape
among the batches the loop is about to consume
(``step.jitted.lower(abstract_state, abstract_batch).compile()``, nothing allocated), so
no timed step pays for compilation; a shape first met later is compiled when it comes,
with a log line, and counted in ``late_compiles``.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import jax

from dss_jax import trainer

ShapeKey = tuple[tuple[str, tuple[int, ...]], ...]


def shape_key(batch: Mapping[str, Any], num_hosts: int = 1) -> ShapeKey:
    """Feature name -> global shape (a host's rows times ``num_hosts``)."""
    return tuple((name, (int(value.shape[0]) * num_hosts, *map(int, value.shape[1:])))
                 for name, value in sorted(batch.items()))


class CompiledSteps:
    """``step(state, global_batch)`` dispatched to the executable compiled for the batch's shape.

    ``step`` is ``trainer.make_train_step(...)`` (it carries ``.jitted``); ``abstract_state``
    holds ``jax.ShapeDtypeStruct`` leaves with their shardings.
    """

    def __init__(self, step, abstract_state: Any, batch_shardings: Mapping[str, Any], mesh, rules,
                 log: Callable[[str], None] = lambda message: None):
        self._step, self._state = step, abstract_state
        self._shardings, self._mesh, self._rules, self._log = dict(batch_shardings), mesh, rules, log
        self._compiled: dict[ShapeKey, Any] = {}
        self._dtypes: dict[str, Any] = {}
        self.late_compiles = 0

    @property
    def shapes(self) -> list[ShapeKey]:
        return list(self._compiled)

    def _compile(self, key: ShapeKey) -> Any:
        batch = {name: jax.ShapeDtypeStruct(shape, self._dtypes[name], sharding=self._shardings[name])
                 for name, shape in key}
        with trainer.sharding_context(self._mesh, self._rules):
            self._compiled[key] = self._step.jitted.lower(self._state, batch).compile()
        return self._compiled[key]

    def prepare(self, local_batches: Iterable[Mapping[str, Any]], num_hosts: int = 1) -> int:
        """Compile every shape among these host batches; returns how many were new."""
        new = 0
        for batch in local_batches:
            self._dtypes.update({name: value.dtype for name, value in batch.items()})
            key = shape_key(batch, num_hosts)
            if key not in self._compiled:
                self._compile(key)
                new += 1
        return new

    def __call__(self, state: Any, global_batch: Mapping[str, jax.Array]):
        key = shape_key(global_batch)
        compiled = self._compiled.get(key)
        if compiled is None:
            self._log(f"compiling the train step for a batch shape not seen before: "
                      f"{dict((name, shape) for name, shape in key)}")
            self._dtypes.update({name: value.dtype for name, value in global_batch.items()})
            compiled = self._compile(key)
            self.late_compiles += 1
        return compiled(state, dict(global_batch))
