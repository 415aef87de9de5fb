"""Partial residency: keep as many transformer blocks on the GPU as the budget allows and stream the rest
from pinned host memory on a side CUDA stream, ahead of use, so the transfer hides behind compute.

Each streamed block's weights live in one flat pinned buffer; on the GPU, streamed blocks share `slots`
staging buffers (block k uses slot k % slots). When a block finishes, the next block *of the same slot* (in
cyclic order, so the next step's first users are loaded as soon as this step's last users finish) is copied
in on a side stream after an event on that compute; a block's compute waits for its own copy's event.
Which blocks stream is the planner's choice (doctor.planner.choose_streamed): the smallest size class first,
spread evenly so each copy has compute to hide behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import nn


@dataclass
class _Streamed:
    block: nn.Module
    host: torch.Tensor  # flat, pinned
    numel: int
    slot: int
    copy_done: Any = None
    compute_done: Any = None
    compute_recorded: bool = False
    next_in_slot: int = 0  # the streamed block loaded into this slot after this one


@dataclass
class PartialResidency:
    """Place `blocks` (execution order) on `device`, streaming the indices in `streamed`."""

    blocks: Sequence[nn.Module]
    streamed: Sequence[int]
    device: torch.device
    slots: int = 2
    _items: list[_Streamed] = field(default_factory=list, init=False)
    _slots: list[torch.Tensor] = field(default_factory=list, init=False)
    _handles: list[Any] = field(default_factory=list, init=False)
    _copy_stream: Optional[torch.cuda.Stream] = field(default=None, init=False)
    _shared: set[int] = field(default_factory=set, init=False)

    @property
    def streamed_bytes(self) -> int:
        return sum(it.numel * it.host.element_size() for it in self._items)

    @property
    def slot_bytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self._slots)

    def apply(self) -> PartialResidency:
        streamed = set(self.streamed)
        cuda = self.device.type == "cuda"
        for i, block in enumerate(self.blocks):
            if i not in streamed:
                block.to(self.device)
        order = [i for i in range(len(self.blocks)) if i in streamed]
        if not order:
            return self
        dtypes = {p.dtype for i in order for p in self.blocks[i].parameters()}
        if len(dtypes) != 1:
            raise ValueError(f"streamed blocks must hold one dtype, found {sorted(map(str, dtypes))}")
        (dtype,) = dtypes
        nslots = min(self.slots, len(order))
        sizes = [sum(p.numel() for p in self.blocks[i].parameters()) for i in order]
        self._slots = [torch.empty(max(sizes), dtype=dtype, device=self.device) for _ in range(nslots)]
        for k, (i, numel) in enumerate(zip(order, sizes)):
            block = self.blocks[i]
            host = torch.empty(numel, dtype=dtype, pin_memory=cuda)
            off = 0
            slot = self._slots[k % nslots]
            for p in block.parameters():
                n = p.numel()
                host[off:off + n].copy_(p.data.reshape(-1))
                p.data = slot[off:off + n].view(p.shape)  # the block computes on whatever its slot holds
                off += n
            for name, buf in block.named_buffers():  # buffers are small: keep them resident
                parent = block.get_submodule(name.rsplit(".", 1)[0]) if "." in name else block
                parent._buffers[name.rsplit(".", 1)[-1]] = buf.to(self.device)
            self._items.append(_Streamed(block, host, numel, k % nslots))
        users: dict[int, list[int]] = {}
        for k, it in enumerate(self._items):
            users.setdefault(it.slot, []).append(k)
        for members in users.values():
            for pos, k in enumerate(members):
                self._items[k].next_in_slot = members[(pos + 1) % len(members)]
        self._shared = {k for members in users.values() if len(members) > 1 for k in members}
        if cuda:
            self._copy_stream = torch.cuda.Stream(device=self.device)
            for it in self._items:
                it.copy_done = torch.cuda.Event()
                it.compute_done = torch.cuda.Event()
        for k, it in enumerate(self._items):
            self._handles.append(it.block.register_forward_pre_hook(self._pre_hook(k)))
            self._handles.append(it.block.register_forward_hook(self._post_hook(k)))
        for members in users.values():
            self._issue_copy(members[0], after=None)
        return self

    def _issue_copy(self, k: int, after: Optional[int]) -> None:
        """Load block k into its slot once block `after` (the slot's previous user) has computed."""
        it = self._items[k]
        dst = self._slots[it.slot][: it.numel]
        if self._copy_stream is None:  # CPU or no streams: synchronous, still correct
            dst.copy_(it.host)
            return
        with torch.cuda.stream(self._copy_stream):
            if after is not None and self._items[after].compute_recorded:
                self._copy_stream.wait_event(self._items[after].compute_done)
            dst.copy_(it.host, non_blocking=True)
            it.copy_done.record(self._copy_stream)

    def _pre_hook(self, k: int):
        def hook(module: nn.Module, args: Any) -> None:
            it = self._items[k]
            if self._copy_stream is not None:
                torch.cuda.current_stream(self.device).wait_event(it.copy_done)
            elif k in self._shared:
                self._issue_copy(k, after=None)  # synchronous path: load right before use
        return hook

    def _post_hook(self, k: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            it = self._items[k]
            if self._copy_stream is not None:
                it.compute_done.record(torch.cuda.current_stream(self.device))
                it.compute_recorded = True
                if it.next_in_slot != k:  # a slot with one user keeps its block: nothing to reload
                    self._issue_copy(it.next_in_slot, after=k)
        return hook

    def remove(self) -> None:
        """Detach the hooks (weights stay where they are; the host copies remain the source of truth)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
