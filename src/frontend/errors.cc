#include "vdma/frontend/errors.h"

namespace vdma {

std::string_view ErrcTraits<FrontendErrc>::name(FrontendErrc e) {
  switch (e) {
    case FrontendErrc::kConnectFailed: return "connect_failed";
    case FrontendErrc::kBackendExited: return "backend_exited";
    case FrontendErrc::kBackendLacks: return "backend_lacks";
    case FrontendErrc::kInvalidOption: return "invalid_option";
    case FrontendErrc::kDisconnected: return "disconnected";
    case FrontendErrc::kBadReply: return "bad_reply";
  }
  return "unknown";
}

}  // namespace vdma
