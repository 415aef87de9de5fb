"""Partial residency: keep as many transformer blocks on the GPU as the budget allows and stream the rest
from pinned host memory on a side CUDA stream, ahead of use, so the transfer hides behind compute.

Each streamed block's weights live in one flat pinned buffer; on the GPU, streamed blocks share `slots`
staging buffers (block k uses slot k % slots). Copy k waits for the compute of the block that last used its
slot (k - slots); compute of block k waits for copy k. The copy of the next step's first streamed blocks is
issued as soon as this step's last users of their slots finish, so transfers also overlap across steps.
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
        if cuda:
            self._copy_stream = torch.cuda.Stream(device=self.device)
            for it in self._items:
                it.copy_done = torch.cuda.Event()
                it.compute_done = torch.cuda.Event()
        for k, it in enumerate(self._items):
            self._handles.append(it.block.register_forward_pre_hook(self._pre_hook(k)))
            self._handles.append(it.block.register_forward_hook(self._post_hook(k)))
        for k in range(nslots):
            self._issue_copy(k)
        return self

    def _issue_copy(self, k: int) -> None:
        it = self._items[k]
        nslots = len(self._slots)
        dst = self._slots[it.slot][: it.numel]
        if self._copy_stream is None:  # CPU or no streams: synchronous, still correct
            dst.copy_(it.host)
            return
        prev = self._items[(k - nslots) % len(self._items)]
        with torch.cuda.stream(self._copy_stream):
            if prev.compute_recorded:
                self._copy_stream.wait_event(prev.compute_done)
            dst.copy_(it.host, non_blocking=True)
            it.copy_done.record(self._copy_stream)

    def _pre_hook(self, k: int):
        def hook(module: nn.Module, args: Any) -> None:
            it = self._items[k]
            if self._copy_stream is not None:
                torch.cuda.current_stream(self.device).wait_event(it.copy_done)
            elif len(self._items) > len(self._slots):
                self._issue_copy(k)  # synchronous path: load right before use
        return hook

    def _post_hook(self, k: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            it = self._items[k]
            if self._copy_stream is not None:
                it.compute_done.record(torch.cuda.current_stream(self.device))
                it.compute_recorded = True
                nxt = (k + len(self._slots)) % len(self._items)
                if len(self._items) > len(self._slots) or nxt != k:
                    self._issue_copy(nxt)
        return hook

    def remove(self) -> None:
        """Detach the hooks (weights stay where they are; the host copies remain the source of truth)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
