// Connecting to a vhost-user back-end's listening unix socket.
//
//   UniqueFd sock = VDMA_TRY(connect_unix_socket("/tmp/blk.sock"));
//   auto fe = VDMA_TRY(VhostUserFrontend::create(std::move(sock), options));
//
// Errors: FrontendErrc::kConnectFailed naming the path and the errno text,
// e.g. "cannot connect to /tmp/x.sock: No such file or directory" or
// "...: Connection refused"; a path longer than sun_path is
// FrontendErrc::kInvalidOption. The socket is close-on-exec and blocking.
// Thread safety: a plain function.
#pragma once

#include <filesystem>

#include "vdma/base/result.h"
#include "vdma/base/unique_fd.h"

namespace vdma {

[[nodiscard]] Result<UniqueFd> connect_unix_socket(const std::filesystem::path& path);

}  // namespace vdma
