#include "vdma/frontend/connect.h"

#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>

#include "vdma/frontend/errors.h"

namespace vdma {

Result<UniqueFd> connect_unix_socket(const std::filesystem::path& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string& p = path.native();
  if (p.empty() || p.size() >= sizeof(addr.sun_path)) {
    return make_error(FrontendErrc::kInvalidOption, "socket path '{}' must be 1..{} bytes", p,
                      sizeof(addr.sun_path) - 1);
  }
  std::memcpy(addr.sun_path, p.data(), p.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return system_error("socket", errno);
  int r = 0;
  do {
    r = ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  } while (r != 0 && errno == EINTR);
  if (r != 0) return make_error(FrontendErrc::kConnectFailed, "cannot connect to {}: {}", p, std::strerror(errno));
  return fd;
}

}  // namespace vdma
