"""Long operations' records; they expire a day after they were made."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

from mobility import keys
from mobility.errors import NotFound
from mobility.operations import Operation, OpStatus
from mobility.store.base import StoreBase, pack, unpack

OP_TTL_S = 24 * 3600


class OperationStore(StoreBase):

    def put_operation(self, op: Operation) -> None:
        self.r.set(keys.operation(op.id), pack(op.to_dict()), ex=OP_TTL_S)

    def get_operation(self, op_id: str) -> Operation:
        raw = cast(bytes | None, self.r.get(keys.operation(op_id)))
        if raw is None:
            raise NotFound(f"operation {op_id!r} does not exist")
        return Operation.from_dict(unpack(raw)).seen_at(time.time())

    def _update_operation(self, op_id: str, fn: Callable[[Operation], Operation]) -> Operation:
        def apply(d: dict[str, Any]) -> dict[str, Any]:
            return fn(Operation.from_dict(d)).to_dict()

        new = Operation.from_dict(self._update(keys.operation(op_id), apply))
        self.r.expire(keys.operation(op_id), OP_TTL_S)
        return new

    def start_operation(self, op_id: str) -> Operation:
        return self._update_operation(op_id, lambda o: replace(
            o, status=OpStatus.RUNNING, started_at=time.time()))

    def finish_operation(self, op_id: str, *, result: dict[str, Any] | None = None,
                         error: str | None = None, error_kind: str | None = None) -> Operation:
        status = OpStatus.FAILED if error is not None else OpStatus.SUCCEEDED
        return self._update_operation(op_id, lambda o: replace(
            o, status=status, finished_at=time.time(), result=dict(result or {}), error=error,
            error_kind=error_kind))
