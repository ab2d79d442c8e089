// Private: the two storage implementations behind open_storage().
#pragma once

#include <memory>
#include <string>

#include "vdma/blk/storage.h"

namespace vdma::blk {

[[nodiscard]] std::unique_ptr<StorageBackend> make_null_storage(uint64_t size_bytes, bool read_only);
[[nodiscard]] Result<std::unique_ptr<StorageBackend>> open_file_storage(const std::string& path,
                                                                        const StorageOptions& options);

}  // namespace vdma::blk
