// Errors of the vhost-user front-end.
//
//   auto fe = VhostUserFrontend::connect("/tmp/blk.sock", options);
//   if (!fe && fe.error().is(FrontendErrc::kBackendLacks)) {
//     // "back-end does not offer ACCESS_PLATFORM; the iommu and restricted
//     //  modes need it (offered features 0x170000000)"
//   }
//
// Codes from the layers below (vhost_user codec, dma topology and policy,
// virtio feature negotiation, base system errors) pass through unchanged;
// these are the front-end's own.
#pragma once

#include "vdma/base/error.h"

namespace vdma {

enum class FrontendErrc {
  kConnectFailed = 1,  // the back-end socket is not there or refuses; names the path and errno text
  kBackendExited,      // a spawned back-end exited before it accepted; names its exit status
  kBackendLacks,       // the back-end lacks a feature or queue count the mode or options need
  kInvalidOption,      // a FrontendOptions value or mode name outside its domain
  kDisconnected,       // the back-end hung up, or a reply did not arrive; the session is over
  kBadReply,           // the back-end answered something the protocol does not allow here
};

template <>
struct ErrcTraits<FrontendErrc> {
  static constexpr std::string_view domain = "frontend";
  static std::string_view name(FrontendErrc e);
};

}  // namespace vdma
