// The tensor cache: `tensor-cache.json` plus `params_shard_*.bin` (runtime/tensor_cache.py).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mlc {

struct TensorRecord {
  std::string name, dtype;
  std::vector<int64_t> shape;
  int64_t nbytes = 0, byte_offset = 0;
};

struct Shard {
  std::string data_path, sha256;
  int64_t nbytes = 0;
  std::vector<TensorRecord> records;
};

struct TensorCacheIndex {
  std::vector<Shard> shards;
  static TensorCacheIndex Load(const std::string& model_dir, const std::string& rebuild);
  std::vector<const TensorRecord*> Records() const;
};

// The shard's bytes, checked against its recorded size and (with `verify`) its sha256;
// ArtifactError says which shard is missing, truncated or corrupted.
std::string ReadShard(const std::string& model_dir, const Shard& shard, bool verify,
                      const std::string& rebuild);

}  // namespace mlc
