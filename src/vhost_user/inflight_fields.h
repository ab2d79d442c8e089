// Private: loads and stores of fields of an inflight area (inflight.h), shared
// by SplitInflight and PackedInflight.
//
// The area is memory the front-end shares and keeps across back-end
// restarts: every load returns a front-end-controlled value. Every field is
// naturally aligned (the regions are 64-aligned in a mapping and the offsets
// are multiples of the field sizes), so each access is one std::atomic_ref
// operation. Stores are release stores: the next back-end reads the area
// only after this one is gone, so what matters is that the stores reach it
// in the order the spec lists them; a release store keeps every earlier
// store before it (x86: a plain store; elsewhere: a barrier per store).
#pragma once

#include <atomic>
#include <cstddef>

#include "vdma/virtio/le.h"

namespace vdma::vhost_user::inflight {

template <class T>
[[nodiscard]] inline T load_field(const std::byte* p) noexcept {
  auto* field = static_cast<T*>(static_cast<void*>(const_cast<std::byte*>(p)));
  return from_le(std::atomic_ref<T>(*field).load(std::memory_order_acquire));
}

template <class T>
inline void store_field(std::byte* p, T v) noexcept {
  auto* field = static_cast<T*>(static_cast<void*>(p));
  std::atomic_ref<T>(*field).store(to_le(v), std::memory_order_release);
}

}  // namespace vdma::vhost_user::inflight
