#include "tensor_cache.h"

#include <fstream>
#include <sstream>

#include "chat_config.h"
#include "sha256.h"

namespace mlc {

TensorCacheIndex TensorCacheIndex::Load(const std::string& model_dir, const std::string& rebuild) {
  std::string path = model_dir + "/tensor-cache.json";
  Json json = ReadJsonFile(path, "weight index");
  TensorCacheIndex index;
  try {
    for (const Json& s : json.at("records").as_array()) {
      Shard shard;
      shard.data_path = s.at("dataPath").as_string();
      shard.nbytes = s.at("nbytes").as_int();
      shard.sha256 = s.at("sha256").as_string();
      for (const Json& r : s.at("records").as_array()) {
        TensorRecord record;
        record.name = r.at("name").as_string();
        record.dtype = r.at("dtype").as_string();
        for (const Json& dim : r.at("shape").as_array()) record.shape.push_back(dim.as_int());
        record.nbytes = r.at("nbytes").as_int();
        record.byte_offset = r.at("byteOffset").as_int();
        if (record.byte_offset < 0 || record.nbytes < 0 || record.byte_offset + record.nbytes > shard.nbytes) {
          throw std::runtime_error("record " + record.name + " lies outside its shard");
        }
        shard.records.push_back(std::move(record));
      }
      index.shards.push_back(std::move(shard));
    }
  } catch (const ArtifactError&) {
    throw;
  } catch (const std::runtime_error& err) {
    throw ArtifactError(path + " is not a tensor cache index (" + err.what() + "); " + rebuild);
  }
  return index;
}

std::vector<const TensorRecord*> TensorCacheIndex::Records() const {
  std::vector<const TensorRecord*> out;
  for (const Shard& shard : shards) {
    for (const TensorRecord& record : shard.records) out.push_back(&record);
  }
  return out;
}

std::string ReadShard(const std::string& model_dir, const Shard& shard, bool verify,
                      const std::string& rebuild) {
  std::string path = model_dir + "/" + shard.data_path;
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw ArtifactError("weight shard missing: " + path + "; " + rebuild);
  int64_t size = static_cast<int64_t>(in.tellg());
  if (size != shard.nbytes) {
    throw ArtifactError("weight shard " + shard.data_path + " has " + std::to_string(size) +
                        " bytes, expected " + std::to_string(shard.nbytes) +
                        ": it is truncated or damaged; " + rebuild);
  }
  std::string data(static_cast<size_t>(size), '\0');
  in.seekg(0);
  in.read(data.data(), size);
  if (!in) throw ArtifactError("cannot read weight shard " + path + "; " + rebuild);
  if (verify) {
    Sha256 hash;
    hash.Update(data.data(), data.size());
    if (hash.HexDigest() != shard.sha256) {
      throw ArtifactError("weight shard " + shard.data_path + " fails its checksum: it is corrupted; " + rebuild);
    }
  }
  return data;
}

}  // namespace mlc
