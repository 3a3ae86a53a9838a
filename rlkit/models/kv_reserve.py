"""A KV cache written in place: :func:`reserve` preallocates a ``DynamicCache``'s layers for the tokens to come.

``transformers``' ``DynamicLayer.update`` appends a decoding step's keys and values with ``torch.cat``: every
token copies the whole cache, ``O(T^2)`` bytes over ``T`` tokens (about a fifth of the native sampler's time on a
35M-parameter model). The sampler knows, right after its prefill, how many positions the cache can still grow by
(``max_new_tokens``). :func:`reserve` turns each layer into a :class:`ReservedLayer` holding buffers with that
room, the prefill's keys/values copied in once; each step then writes its token into the buffers in place, and the
layer's ``keys``/``values`` are views of the filled prefix, so attention, masks and ``get_seq_length`` see exactly
what a ``DynamicLayer`` shows them.

The batch operations of the sampler (``batch_repeat_interleave``, ``batch_select_indices``) index the buffers
directly; ``crop`` and ``reset`` are ``DynamicLayer``'s. Anything else that replaces ``keys``/``values`` (beam
reordering, offloading) is noticed at the next ``update``, which re-reserves from the new tensors, and an update past
the capacity grows the buffers: never a wrong or failed step, at worst a copy.

Only plain ``DynamicLayer``s are converted. :func:`reserve` returns ``False`` and changes nothing for any other
cache (sliding-window, quantized, static, linear-attention, offloading, no ``layers`` at all): the caller keeps
the cache it has. The layer API used here is the same in transformers 5.19 and 5.24.
"""

from __future__ import annotations

import torch

from transformers.cache_utils import DynamicLayer


class ReservedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``keys``/``values`` are the first ``length`` positions of preallocated buffers
    ``[B, H, capacity, D]``; ``update`` writes into the buffers instead of concatenating."""

    # an initialized layer's states (a DynamicLayer declares them Optional for its uninitialized state); the
    # buffers are None only before the first allocation and after reset, and every path reading them checks
    keys: torch.Tensor
    values: torch.Tensor
    key_buf: torch.Tensor
    value_buf: torch.Tensor

    def __init__(self, headroom: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.headroom = headroom  # positions added past the current length whenever the buffers are (re)allocated
        self.key_buf = self.value_buf = None  # type: ignore[assignment]

    @classmethod
    def from_layer(cls, layer, headroom: int) -> ReservedLayer:
        """The same layer (every attribute copied), its current states moved into buffers with ``headroom`` free
        positions."""
        new = cls.__new__(cls)
        new.__dict__.update(layer.__dict__)
        new.headroom, new.key_buf, new.value_buf = headroom, None, None  # type: ignore[assignment]
        if new.is_initialized and new.keys is not None and new.keys.numel() > 0:
            new._allocate(new.keys.shape[-2] + headroom, new.keys, new.values)
        return new

    def capacity(self) -> int:
        """The number of positions the buffers hold (0 before the first allocation)."""
        return 0 if self.key_buf is None else self.key_buf.shape[-2]

    def _viewing_buffers(self) -> bool:
        """Whether ``keys``/``values`` are still the buffers' prefix (not replaced by someone else's tensors)."""
        return (
            self.key_buf is not None
            and self.keys is not None
            and self.keys.data_ptr() == self.key_buf.data_ptr()
            and self.values.data_ptr() == self.value_buf.data_ptr()
            and self.keys.stride() == self.key_buf.stride()
        )

    def _allocate(self, capacity: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """New buffers of ``capacity`` positions, batch/heads/head size/dtype those of ``keys`` and ``values``
        (``[B, H, *, D]``); the current states are copied to their front and ``keys``/``values`` view that front."""
        length = self.get_seq_length()
        self.key_buf = keys.new_empty((*keys.shape[:2], capacity, keys.shape[-1]))
        self.value_buf = values.new_empty((*values.shape[:2], capacity, values.shape[-1]))
        if length:
            self.key_buf[:, :, :length].copy_(self.keys)
            self.value_buf[:, :, :length].copy_(self.values)
        self._view(length)

    def _view(self, length: int) -> None:
        self.keys, self.values = self.key_buf[:, :, :length], self.value_buf[:, :, :length]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new states after the current ones, in place; (re)allocate first when the buffers are missing,
        too small, or no longer behind ``keys``/``values``. Returns the keys and values of all positions."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        end = length + key_states.shape[-2]
        keys, values = (self.keys, self.values) if length else (key_states, value_states)
        if not self._viewing_buffers() or end > self.capacity() or self.key_buf.shape[:2] != keys.shape[:2]:
            self._allocate(end + self.headroom, keys, values)
        if key_states.shape[:2] != self.key_buf.shape[:2] or value_states.shape[:2] != self.value_buf.shape[:2]:
            raise RuntimeError(
                f"ReservedLayer.update: new states {tuple(key_states.shape)} do not match the cache's batch and heads "
                f"{tuple(self.key_buf.shape[:2])}"
            )
        self.key_buf[:, :, length:end].copy_(key_states)
        self.value_buf[:, :, length:end].copy_(value_states)
        self._view(end)
        return self.keys, self.values

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every row ``repeats`` times (``DynamicLayer``'s semantics), buffers and free room included."""
        if not self._viewing_buffers():
            return super().batch_repeat_interleave(repeats)
        if self.get_seq_length() > 0:
            length = self.get_seq_length()
            self.key_buf = self.key_buf.repeat_interleave(repeats, dim=0)
            self.value_buf = self.value_buf.repeat_interleave(repeats, dim=0)
            self._view(length)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows ``indices`` (``DynamicLayer``'s semantics), buffers and free room included."""
        if not self._viewing_buffers():
            return super().batch_select_indices(indices)
        if self.get_seq_length() > 0:
            length = self.get_seq_length()
            self.key_buf, self.value_buf = self.key_buf[indices, ...], self.value_buf[indices, ...]
            self._view(length)

    def reset(self) -> None:
        """``DynamicLayer``'s reset; the buffers are dropped too (the next ``update`` allocates afresh)."""
        super().reset()
        self.key_buf = self.value_buf = None  # type: ignore[assignment]


def reserve(cache, extra: int) -> bool:
    """Give every layer of ``cache`` room for ``extra`` more positions, written in place from now on.

    Returns ``True`` when every layer was a plain ``DynamicLayer`` and is now a :class:`ReservedLayer` (the
    prefill's states copied once into the buffers); ``False``, changing nothing, for a cache without ``layers``,
    an offloading cache, or any layer of another kind. Call it after the prefill (and after any
    ``batch_repeat_interleave``, so the repeat copies only the filled positions); calling it again on a reserved
    cache returns ``False``."""
    layers = getattr(cache, "layers", None)
    if not isinstance(layers, list) or not layers or getattr(cache, "offloading", False):
        return False
    if any(type(layer) is not DynamicLayer for layer in layers):
        return False
    layers[:] = [ReservedLayer.from_layer(layer, max(0, int(extra))) for layer in layers]
    return True
